"""Data: MATLAB-exact resize and colour, image reading, training patches, benchmark sets, DataModule."""
