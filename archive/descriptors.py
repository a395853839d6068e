"""Behavioural descriptors of a loss: numbers that say *how* it trains, used as the axes of the QD grid.

Every descriptor except `complexity` is read off the loss's gradient along a fixed *margin line*, computed
with JAX autodiff through the population kernel, i.e. exactly the function training differentiates
(`margin_profile`):

    both segments have PROBE_LENGTH steps and reference log-likelihood PROBE_REF_LOGP (sums);
    at margin m the policy puts logp_w = ref + m/2 and logp_l = ref - m/2,
    so every log-ratio form of the margin (h_w - h_l, logp_w - logp_l, per-step means x PROBE_LENGTH) is m,
    and progress t takes each value of PROBE_T (descriptors average over them, so a temporally aware loss
    is described over its whole schedule).

With d_w = dL/dlogp_w and d_l = dL/dlogp_l (sequence sums; the per-step means follow them) and
G(m) = mean over t of |d_w| + |d_l|:

* `saturation`  how far the gradient has died away at a comfortable margin:
                log10(G(0) / G(SATURATION_MARGIN)) / SATURATION_DECADES, clipped to [0, 1].
                0: no decay (SFT; IPO ~0.02, whose gradient only shrinks linearly towards its target
                margin); 1: decayed by SATURATION_DECADES or more orders of magnitude, or to exactly
                zero (hinge).  DPO with beta = 0.1 sits near 0.47.
* `asymmetry`   share of the gradient on the chosen segment, mean of |d_w| / (|d_w| + |d_l|) over the
                margins ASYMMETRY_MARGINS and PROBE_T (points with no gradient are left out):
                0.5 for any function of the margin alone (DPO, IPO, hinge), 1 for SFT.
* `imitation`   the push that still raises logp_w once the pair is separated by IMITATION_MARGIN, beyond
                any push that lowers logp_l there (a margin term that never saturates, like robust DPO's,
                pushes both and is not imitation), as a share of the gradient at margin 0:
                mean over t of max(-d_w - max(d_l, 0), 0) at that margin / G(0), clipped to [0, 1].
                1 for SFT, 0 for DPO and robust DPO, in between for ORPO, CPO and TA-MPO.
* `complexity`  `grammar.canonical.complexity` (operator-weighted size of the canonical form).

A loss that is not finite, or whose gradient is not, anywhere on the line raises `DescriptorError`; the
caller rejects the candidate with `str(error)` as the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from archive.qd import DescriptorSpec

PROBE_LENGTH = 50.0  # steps of each segment
PROBE_REF_LOGP = -100.0  # reference log-likelihood of each segment (a sum; -2 per step)
PROBE_T = (0.0, 0.5, 1.0)
SATURATION_MARGIN = 50.0  # a comfortable margin: one nat per step over 50 steps
SATURATION_DECADES = 4.0  # decay (orders of magnitude) that counts as fully saturated
IMITATION_MARGIN = 200.0  # a huge margin: any preference term has long saturated
ASYMMETRY_MARGINS = tuple(np.linspace(-SATURATION_MARGIN, SATURATION_MARGIN, 21).tolist())
PLOT_MARGIN = 100.0  # the line also samples [-PLOT_MARGIN, PLOT_MARGIN] densely, for `archive.plots`
PROBE_MARGINS = tuple(sorted({0.0, SATURATION_MARGIN, IMITATION_MARGIN, *ASYMMETRY_MARGINS,
                              *np.linspace(-PLOT_MARGIN, PLOT_MARGIN, 101).tolist()}))
NO_GRADIENT = 1e-12  # |d_w| + |d_l| below this counts as no gradient


class DescriptorError(ValueError):
    """The loss or its gradient is not finite on the probes, or a descriptor is undefined for it."""


@dataclass(frozen=True)
class MarginProfile:
    """The loss and its gradient along the margin line: arrays of shape (len(t), len(margins))."""

    margins: np.ndarray
    t: np.ndarray
    loss: np.ndarray
    d_chosen: np.ndarray  # dL/dlogp_w
    d_rejected: np.ndarray  # dL/dlogp_l

    def column(self, margin: float) -> int:
        """Index of a margin on the line (it must be one of the probe margins)."""
        hits = np.flatnonzero(self.margins == margin)
        if not len(hits):
            raise KeyError(f"margin {margin} is not on the profile's line")
        return int(hits[0])

    def gradient_size(self, margin: float) -> float:
        """G(m): mean over t of |d_w| + |d_l| at margin m."""
        i = self.column(margin)
        return float(np.mean(np.abs(self.d_chosen[:, i]) + np.abs(self.d_rejected[:, i])))


def margin_profile(objective) -> MarginProfile:
    """Loss and gradient of `objective` along the margin line (see the module docstring).

    Runs the population kernel (`grammar.kernel.loss_and_slopes`) in float32, as training does: the
    probe shape is fixed, so it compiles once per process (a few seconds) and then takes milliseconds
    per objective, whatever its expression.  Raises DescriptorError when the loss does not fit the
    kernel or the loss or its gradient is not finite somewhere on the line.
    """
    import jax.numpy as jnp

    from grammar.kernel import constant_vector, encode, loss_and_slopes
    from grammar.language import GrammarError

    try:
        program = encode(objective)
    except GrammarError as e:
        raise DescriptorError(str(e)) from None
    margins = np.asarray(PROBE_MARGINS, dtype=np.float64)
    t_arr = np.asarray(PROBE_T, dtype=np.float64)
    shape = (len(t_arr), len(margins))
    ref = np.full(shape, PROBE_REF_LOGP, np.float32)
    half = np.broadcast_to(margins / 2.0, shape).astype(np.float32)
    length = np.full(shape, PROBE_LENGTH, np.float32)
    sums = {"logp_w": ref + half, "logp_l": ref - half, "ref_w": ref, "ref_l": ref, "len_w": length,
            "len_l": length, "t": np.broadcast_to(t_arr[:, None], shape).astype(np.float32)}
    out = loss_and_slopes(program, sums, jnp.asarray(constant_vector(objective), jnp.float32))
    profile = MarginProfile(margins, t_arr, *(np.asarray(a, dtype=np.float64) for a in out))
    for what, values in (("loss", profile.loss), ("gradient w.r.t. logp_w", profile.d_chosen),
                         ("gradient w.r.t. logp_l", profile.d_rejected)):
        bad = ~np.isfinite(values)
        if bad.any():
            ti, mi = np.argwhere(bad)[0]
            raise DescriptorError(f"{what} is not finite on the margin line at margin {margins[mi]:g}, "
                                  f"t={t_arr[ti]:g}")
    return profile


# ------------------------------------------------------------------------------------ the descriptors
def saturation(profile: MarginProfile) -> float:
    at_zero = profile.gradient_size(0.0)
    at_margin = profile.gradient_size(SATURATION_MARGIN)
    decades = np.log10((at_zero + NO_GRADIENT) / (at_margin + NO_GRADIENT))
    return float(np.clip(decades / SATURATION_DECADES, 0.0, 1.0))


def asymmetry(profile: MarginProfile) -> float:
    columns = [profile.column(m) for m in ASYMMETRY_MARGINS]
    d_w, d_l = np.abs(profile.d_chosen[:, columns]), np.abs(profile.d_rejected[:, columns])
    size = d_w + d_l
    moving = size > NO_GRADIENT
    if not moving.any():
        raise DescriptorError("asymmetry is undefined: the gradient is zero on every margin probe")
    return float(np.mean(d_w[moving] / size[moving]))


def imitation(profile: MarginProfile) -> float:
    i = profile.column(IMITATION_MARGIN)
    push = np.maximum(-profile.d_chosen[:, i] - np.maximum(profile.d_rejected[:, i], 0.0), 0.0).mean()
    return float(np.clip(push / (profile.gradient_size(0.0) + NO_GRADIENT), 0.0, 1.0))


def _complexity(objective) -> float:
    from grammar.canonical import complexity

    return float(complexity(objective))


@dataclass(frozen=True)
class Descriptor:
    name: str
    doc: str
    low: float  # default grid range and resolution
    high: float
    bins: int
    from_profile: Callable[[MarginProfile], float] | None  # None: computed from the objective itself

    def spec(self, bins: int | None = None, low: float | None = None, high: float | None = None) -> DescriptorSpec:
        return DescriptorSpec(self.name, self.low if low is None else low, self.high if high is None else high,
                              self.bins if bins is None else bins)


DESCRIPTORS: Mapping[str, Descriptor] = {d.name: d for d in (
    Descriptor("complexity", "operator-weighted size of the canonical form", 0.0, 100.0, 10, None),
    Descriptor("saturation", "how far the gradient has decayed at a comfortable margin (0 none, 1 fully)",
               0.0, 1.0, 10, saturation),
    Descriptor("asymmetry", "share of the gradient on the chosen segment (0.5 symmetric, 1 chosen only)",
               0.0, 1.0, 10, asymmetry),
    Descriptor("imitation", "push raising the chosen segment left at a huge margin, relative to margin 0",
               0.0, 1.0, 10, imitation),
)}
DEFAULT_DESCRIPTORS = ("complexity", "saturation")
DESCRIPTOR_SPECS: tuple[DescriptorSpec, ...] = tuple(DESCRIPTORS[n].spec() for n in DEFAULT_DESCRIPTORS)


def _known(name: str) -> Descriptor:
    if name not in DESCRIPTORS:
        raise KeyError(f"unknown descriptor {name!r}; known: {', '.join(DESCRIPTORS)}")
    return DESCRIPTORS[name]


def descriptor_specs(names: Sequence[str] = DEFAULT_DESCRIPTORS,
                     bins: int | Mapping[str, int] | None = None) -> list[DescriptorSpec]:
    """Grid axes for the named descriptors with their default ranges; `bins` overrides the resolution
    (one number for all axes, or per name)."""
    per_name = bins if isinstance(bins, Mapping) else {n: bins for n in names}
    return [_known(n).spec(per_name.get(n)) for n in names]


def parse_descriptor_specs(text: str) -> list[DescriptorSpec]:
    """Grid axes from a command-line string: comma-separated `name` or `name=low:high:bins`, e.g.
    "complexity,saturation" or "complexity=0:60:12,asymmetry=0:1:8"."""
    specs = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, grid = item.partition("=")
        descriptor = _known(name.strip())
        if not grid:
            specs.append(descriptor.spec())
            continue
        fields = grid.split(":")
        if len(fields) != 3:
            raise ValueError(f"descriptor axis {item!r}: write name=low:high:bins")
        try:
            low, high, bins = float(fields[0]), float(fields[1]), int(fields[2])
        except ValueError as e:
            raise ValueError(f"descriptor axis {item!r}: {e}") from None
        specs.append(descriptor.spec(bins, low, high))
    if not specs:
        raise ValueError("no descriptor axes given")
    return specs


def describe(objective, names: Sequence[str] | None = None) -> dict[str, float]:
    """The named descriptors (default: all of `DESCRIPTORS`) of an objective, each a finite float.

    Raises DescriptorError when the loss or its gradient is not finite on the probes or a descriptor is
    undefined; KeyError for an unknown name.
    """
    chosen = [_known(n) for n in (DESCRIPTORS if names is None else names)]
    profile = margin_profile(objective) if any(d.from_profile for d in chosen) else None
    return {d.name: d.from_profile(profile) if d.from_profile else _complexity(objective) for d in chosen}


def specs_from(value=None) -> list[DescriptorSpec]:
    """Grid axes from a run's config entry: None (the defaults), a `parse_descriptor_specs` string, or a
    list of names, `DescriptorSpec.to_dict()` dicts or `DescriptorSpec`s."""
    if value is None:
        return list(DESCRIPTOR_SPECS)
    if isinstance(value, str):
        return parse_descriptor_specs(value)
    specs = []
    for item in value:
        if isinstance(item, DescriptorSpec):
            specs.append(item)
        elif isinstance(item, str):
            specs.append(_known(item).spec())
        elif isinstance(item, Mapping):
            specs.append(DescriptorSpec.from_dict(item))
        else:
            raise ValueError(f"cannot read a descriptor axis from {item!r}")
    if not specs:
        raise ValueError("no descriptor axes given")
    return specs
