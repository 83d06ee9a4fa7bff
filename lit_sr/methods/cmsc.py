"""CMSC: Cascaded Multi-Scale Cross network (Hu et al., arXiv 1802.08808).

Spec: shared/docs/methods/cmsc.md. The network takes the bicubic-upsampled Y image (ILR, N x 1 x H x W):
feature extraction -> S cascaded subnetworks of M multi-scale cross (MSC) modules, each subnetwork
wrapped in an identity skip (residual-features learning) -> a shared reconstruction conv after every
subnetwork gives an intermediate prediction ILR + Rec(G_s) -> the output is a learned weighted average
of the S intermediate predictions. Most details are [proposal] in the spec; each is a constructor option.

Registered variants (``lit_sr.registry.build_registered(name, **overrides)``):

- ``cmsc``: paper size. S=4, M=4, 64 channels, modules shared across subnetworks, kernels (3, 5);
  1,153,285 parameters (the survey says 1,220k), depth 35.
- ``cmsc_small``: CPU preset. S=2, M=2, 32 channels, shared, kernels (3, 5); 149,379 parameters, depth 11;
  zero-initialised branch ends and reconstruction, so it starts exactly at bicubic and gains on it within
  a few hundred Adam steps.

Training (``CMSC``, the LightningModule at the end; ``experiments/cmsc/{quick,paper}.yaml``): input the ILR
patch of the batch, scales {2, 3, 4} mixed in every batch; loss = cascaded supervision (``alpha``, default
1/(S+1)) of MSE with the papers' reduction (``lit_sr.losses.mse``, 1/2 per-sample sum, batch mean); the parts
(``intermediate``, ``final``, ``sub1``..``subS``, ``bicubic``) and the assembly weights w_s are logged.
Both presets start from zero-initialised branch ends and reconstruction: with He init alone the paper-size
cascade started at a loss of about 1e7 (bicubic about 1.4) on real patches (see experiments/cmsc/paper.yaml).

The plain network (``CMSCNet``, no Lightning code, exportable) and the pure loss come first; ``CMSC`` follows.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveInt
from torch import Tensor, nn

from lit_sr.data.resize import imresize
from lit_sr.losses import Reduction, mse, scale_balance_weights
from lit_sr.methods.base import SRMethod
from lit_sr.nn import he_init_
from lit_sr.registry import register_model
from lit_sr.typed import check_arguments

Assembly = Literal["free", "softmax", "equal"]


class CMSCOutput(NamedTuple):
    """What ``CMSCNet.forward`` returns: the assembled prediction and the S intermediate ones (all N,1,H,W).

    A NamedTuple so ``final, intermediates = model(ilr)`` works and export sees a plain tuple.
    """

    final: Tensor
    intermediates: list[Tensor]


def _conv(in_ch: int, out_ch: int, kernel: int) -> nn.Conv2d:
    """Same-size conv with bias (odd kernel, zero padding)."""
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=True)


def _branch(channels: int, kernel: int, convs: int) -> nn.Sequential:
    """One MSC branch H_k: conv-ReLU-conv (convs=2) or conv-ReLU (convs=1, keeps the module non-linear)."""
    if convs == 2:
        return nn.Sequential(
            _conv(channels, channels, kernel), nn.ReLU(inplace=True), _conv(channels, channels, kernel)
        )
    return nn.Sequential(_conv(channels, channels, kernel), nn.ReLU(inplace=True))


class MSCModule(nn.Module):
    """Multi-scale cross module with merge-and-run (Zhao et al., IJCAI 2018).

    m = (a + b) / 2;  a' = H_k1(a) + m;  b' = H_k2(b) + m. No activation after the additions.
    """

    def __init__(self, channels: int, kernels: tuple[int, int], convs_per_branch: int) -> None:
        super().__init__()
        self.branch_a = _branch(channels, kernels[0], convs_per_branch)
        self.branch_b = _branch(channels, kernels[1], convs_per_branch)

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        m = (a + b) * 0.5
        return self.branch_a(a) + m, self.branch_b(b) + m


class CMSCSubnet(nn.Module):
    """One subnetwork: [optional entry conv+ReLU] -> M MSC modules on a0 = b0 -> (a_M + b_M)/2 + input."""

    def __init__(
        self,
        channels: int,
        num_modules: int,
        kernels: tuple[int, int],
        convs_per_branch: int,
        entry_conv: bool,
    ) -> None:
        super().__init__()
        self.entry = None
        if entry_conv:
            self.entry = nn.Sequential(_conv(channels, channels, 3), nn.ReLU(inplace=True))
        self.msc = nn.ModuleList(MSCModule(channels, kernels, convs_per_branch) for _ in range(num_modules))

    def forward(self, g: Tensor) -> Tensor:
        x = self.entry(g) if self.entry is not None else g
        a = b = x
        for module in self.msc:
            a, b = module(a, b)
        return (a + b) * 0.5 + g  # residual-features learning: identity skip around the subnetwork


class CMSCNet(nn.Module):
    """Cascaded multi-scale cross network on the ILR Y image; returns ``CMSCOutput(final, intermediates)``.

    The typed arguments are checked as jsonargparse checks a config: by ``build_registered`` for a variant's
    overrides (``model.init_args.net.<key>``), here for a direct call (``CMSCNet.<key>``).

    Args:
        num_subnets: S, number of cascaded subnetworks (= number of intermediate predictions).
        num_modules: M, MSC modules per subnetwork.
        channels: feature width.
        share_weights: one set of M modules (and entry conv) reused by all S subnetworks [proposal];
            False gives S independent subnetworks.
        branch_kernels: kernel sizes of the two branches, odd [proposal].
        assembly: how the S intermediate predictions are weighted [proposal]:
            ``free`` learnable scalars w_s (init 1/S), ``softmax`` learnable logits (init 0, so 1/S),
            ``equal`` fixed 1/S.
        convs_per_branch: 2 (conv-ReLU-conv) or 1 (conv-ReLU) per branch [proposal].
        entry_conv: one conv3x3+ReLU at the start of each subnetwork, as the survey drawing shows [proposal].
        zero_init_branch_end: zero the last conv of every branch so each module starts as identity plus
            the merge term; a stabiliser the spec suggests if training diverges [proposal].
        zero_init_reconstruction: zero the reconstruction conv's weight so every prediction starts as the
            ILR itself (bicubic) [our addition, not in the spec]. With plain He init the residual branch
            starts large (std about 1.5e3 at paper size, since each shared subnetwork multiplies the
            feature scale by about 9), which costs many early steps.
    """

    def __init__(
        self,
        num_subnets: PositiveInt = 4,
        num_modules: PositiveInt = 4,
        channels: PositiveInt = 64,
        share_weights: bool = True,
        branch_kernels: tuple[int, int] = (3, 5),
        assembly: Assembly = "free",
        convs_per_branch: Literal[1, 2] = 2,
        entry_conv: bool = False,
        zero_init_branch_end: bool = False,
        zero_init_reconstruction: bool = False,
    ) -> None:
        super().__init__()
        check_arguments(CMSCNet.__init__, locals(), "CMSCNet.")
        kernels = branch_kernels
        if not isinstance(kernels, (tuple, list)) or len(kernels) != 2 or not all(
            type(k) is int and k > 0 and k % 2 for k in kernels  # odd sizes: what no type hint says
        ):
            raise ValueError(
                f"CMSCNet.branch_kernels must be two odd positive integers such as (3, 5), got {kernels!r}"
            )
        branch_kernels = tuple(kernels)
        self.num_subnets = num_subnets
        self.num_modules = num_modules
        self.share_weights = share_weights
        self.assembly = assembly
        # Every constructor value, for run logging (the spec asks each run to log its [proposal] choices).
        self.config = dict(
            num_subnets=num_subnets,
            num_modules=num_modules,
            channels=channels,
            share_weights=share_weights,
            branch_kernels=branch_kernels,
            assembly=assembly,
            convs_per_branch=convs_per_branch,
            entry_conv=entry_conv,
            zero_init_branch_end=zero_init_branch_end,
            zero_init_reconstruction=zero_init_reconstruction,
        )
        self.depth = 2 + num_subnets * (num_modules * convs_per_branch + int(entry_conv)) + 1

        self.features = nn.Sequential(
            _conv(1, channels, 3), nn.ReLU(inplace=True), _conv(channels, channels, 3), nn.ReLU(inplace=True)
        )
        # Shared weights: the same module object serves every subnetwork (not copies), so it gets S gradients.
        self.subnets = nn.ModuleList(
            CMSCSubnet(channels, num_modules, branch_kernels, convs_per_branch, entry_conv)
            for _ in range(1 if share_weights else num_subnets)
        )
        self.reconstruction = _conv(channels, 1, 3)  # shared across all S predictions
        he_init_(self)
        if zero_init_branch_end:
            for subnet in self.subnets:
                for module in subnet.msc:
                    for branch in (module.branch_a, module.branch_b):
                        last = [m for m in branch if isinstance(m, nn.Conv2d)][-1]
                        nn.init.zeros_(last.weight)
                        nn.init.zeros_(last.bias)
        if zero_init_reconstruction:
            nn.init.zeros_(self.reconstruction.weight)  # bias is already 0: predictions start at the ILR

        if assembly == "free":
            self.assembly_param = nn.Parameter(torch.full((num_subnets,), 1.0 / num_subnets))
        elif assembly == "softmax":
            self.assembly_param = nn.Parameter(torch.zeros(num_subnets))  # logits; softmax gives 1/S
        else:
            self.register_buffer(
                "assembly_param", torch.full((num_subnets,), 1.0 / num_subnets), persistent=False
            )

    def subnet(self, s: int) -> CMSCSubnet:
        """Subnetwork s (0-based); the same object for every s when weights are shared."""
        return self.subnets[0 if self.share_weights else s]

    def assembly_weights(self) -> Tensor:
        """The S weights w_s applied to the intermediate predictions (log them: they may go negative)."""
        if self.assembly == "softmax":
            return torch.softmax(self.assembly_param, dim=0)
        return self.assembly_param

    def forward(self, ilr: Tensor) -> CMSCOutput:
        if ilr.dim() != 4 or ilr.shape[1] != 1:
            raise ValueError(
                f"CMSC takes the bicubic-upsampled Y image as (N, 1, H, W); got shape "
                f"{tuple(ilr.shape)} (convert RGB to Y first, e.g. lit_sr.data.color.to_y)"
            )
        g = self.features(ilr)
        intermediates = []
        for s in range(self.num_subnets):
            g = self.subnet(s)(g)
            intermediates.append(ilr + self.reconstruction(g))  # global residual on the ILR
        w = self.assembly_weights().to(ilr.dtype)
        final = w[0] * intermediates[0]
        for s in range(1, self.num_subnets):
            final = final + w[s] * intermediates[s]
        return CMSCOutput(final, intermediates)


def default_alpha(num_subnets: int) -> float:
    """The spec's default weight of the intermediate losses, alpha = 1 / (S + 1) (MemNet-style)."""
    return 1.0 / (num_subnets + 1)


def cascaded_loss(
    final: Tensor,
    intermediates: Sequence[Tensor],
    target: Tensor,
    alpha: float,
    base_loss: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cascaded supervision: alpha * mean_s base_loss(Y_s, target) + (1 - alpha) * base_loss(final, target).

    Returns the total (with graph) and detached parts for logging: ``intermediate`` (the mean over s),
    ``final``, and ``sub1`` .. ``subS`` (each intermediate prediction's loss).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"cascaded_loss: alpha must lie in [0, 1], got {alpha!r} (spec default 1/(S+1))")
    if len(intermediates) == 0:
        raise ValueError("cascaded_loss: intermediates is empty; pass the S intermediate predictions")
    sub_losses = [base_loss(pred, target) for pred in intermediates]
    intermediate = torch.stack(sub_losses).mean()
    final_loss = base_loss(final, target)
    total = alpha * intermediate + (1.0 - alpha) * final_loss
    parts = {"intermediate": intermediate.detach(), "final": final_loss.detach()}
    parts.update({f"sub{s + 1}": loss.detach() for s, loss in enumerate(sub_losses)})
    return total, parts


# ---------------------------------------------------------------------------------------------------
# Registered variants, timm style, one line each: keyword arguments override the variant's defaults;
# a scale in the variant's name is passed outside them, so overriding it is an error.

CMSC_SMALL = dict(num_subnets=2, num_modules=2, channels=32, zero_init_branch_end=True, zero_init_reconstruction=True)


@register_model  # Paper size: S=4, M=4, 64 channels, shared modules, kernels (3, 5); 1,153,285 parameters, depth 35
def cmsc(**kw: Any) -> CMSCNet: return CMSCNet(**{"num_subnets": 4, "num_modules": 4, "channels": 64, **kw})
@register_model  # CPU preset: S=2, M=2, 32 channels, shared, kernels (3, 5), starts at bicubic; 149,379 parameters
def cmsc_small(**kw: Any) -> CMSCNet: return CMSCNet(**{**CMSC_SMALL, **kw})


class CMSC(SRMethod):
    """CMSC training: cascaded supervision of the S intermediate predictions and the assembled output.

    One model for every trained scale (the network sees the ILR, so the scale only changes the input).
    """

    name = "cmsc"
    network_type = CMSCNet
    batch_needs = ("ilr",)

    def __init__(
        self,
        variant: str = "cmsc",
        alpha: float | None = None,
        reduction: Reduction = "paper",
        scale_balance: Literal["none", "bicubic"] = "none",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            variant: ``cmsc`` (paper size) or ``cmsc_small``; ``net`` overrides its arguments.
            alpha: weight of the mean intermediate loss against the assembled one [proposal];
                None = 1/(S+1) (spec default). The resolved number goes into the hparams: the run logs it.
            reduction: ``paper`` (1/2 per-sample sum, batch mean: the scale VDSR's lr 0.1 and theta 0.01
                assume) or ``mean`` (per pixel: 1/840.5 of ``paper`` on 41x41 patches).
            scale_balance: ``bicubic`` weights each sample by 1 / its scale's bicubic MSE in the batch
                (``losses.scale_balance_weights``, as VDSR's option) [proposal; ``none`` is the paper's loss].
        """
        super().__init__(variant=variant, **kwargs)
        num_subnets = self.net.num_subnets
        if alpha is None:
            alpha = default_alpha(num_subnets)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"model.init_args.alpha must be a number in [0, 1] (or null for 1/(S+1) = "
                f"{default_alpha(num_subnets):.4g}), got {alpha!r}"
            )
        self.alpha = float(alpha)
        self.reduction, self.scale_balance = reduction, scale_balance
        # Log and checkpoint what was used, not only what was overridden: alpha and every network option (the
        # spec's [proposal]s). A dict argument updates the hparams and the initial copy the loggers receive. Our
        # frame, passed: no reference cycle (see SRMethod.__init__).
        hparams = {"alpha": self.alpha, "net": dict(self.net.config)}
        self.save_hyperparameters(hparams, frame=inspect.currentframe())

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return mse(pred, target, self.reduction)

    def sr_forward(self, lr: Tensor, scale: int) -> Tensor:
        return self.net(imresize(lr, scale)).final

    def compute_loss(self, groups: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        # ILR patches of every scale have the same size, so the groups run as one batch.
        ilr = torch.cat([g["ilr"] for g in groups])
        hr = torch.cat([g["hr"] for g in groups])
        final, intermediates = self.net(ilr)
        loss = self._loss
        if self.scale_balance == "bicubic":
            scale = torch.cat([g["scale"] for g in groups])
            loss = functools.partial(mse, reduction=self.reduction, weight=scale_balance_weights(ilr, hr, scale))
        return cascaded_loss(final, intermediates, hr, self.alpha, base_loss=loss)

    def reference_loss(self, groups: list[dict]) -> dict[str, Tensor]:
        return {"bicubic": self.bicubic_loss(groups, self._loss)}

    def training_step(self, batch, batch_idx: int) -> Tensor:
        total = super().training_step(batch, batch_idx)
        # w_s may go negative or let one prediction dominate (spec gotcha): written every log_every_n_steps.
        if self.is_logging_step():
            for s, w in enumerate(self.net.assembly_weights().detach().float().tolist()):
                self.log(f"assembly/w{s + 1}", w, on_step=True, on_epoch=False)
        return total
