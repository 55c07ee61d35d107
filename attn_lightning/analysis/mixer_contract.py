"""The contract for any sequence mixer: the checks of analysis/contract.py that hold for a
module that is not a `CausalSelfAttention`.

Any other torch module mapping (B, T, C) -> (B, T, C) (a library's attention layer, an SSM
block) is checked through `MixerUnderTest` (`run_mixer_contract`): both causality checks run;
the attention matrix is not applicable (a plain module shows none), nor are the decoding
checks unless the module has a recurrent step, named by the caller, with this protocol:

    y_t, state = module.<step>(x_t, state)

called for t = 0, 1, ..., T-1 in order, x_t = x[:, t:t+1] (B, 1, C), state None at t = 0 and
afterwards whatever the previous call returned (any object: its tensors are the decoding
state counted); y_t (B, 1, C) or (B, C) must equal forward(x)[:, t]. A module whose forward
returns a tuple is read by its first element.

The rows, their names and messages are those of the attention contract.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import Tensor, nn

from attn_lightning.analysis.contract import (
    ATTENTION_MATRIX,
    CAUSALITY_GRADIENTS,
    CAUSALITY_OUTPUTS,
    DECODING,
    DECODING_STATE,
    Check,
    CheckResult,
    ContractSizes,
    check_causality_gradients,
    check_causality_outputs,
    decoding_result,
    not_applicable,
    random_input,
    run_contract,
    state_result,
)
from attn_lightning.analysis.state_size import cache_bytes


class MixerUnderTest(nn.Module):
    """A module mapping (B, T, C) -> (B, T, C), seen as the checks see attention:
    forward(x) -> (y, None), y the first element when the module returns a tuple; `step`:
    the name of its recurrent step method (module docstring), or None."""

    def __init__(self, mixer: nn.Module, step: str | None = None) -> None:
        super().__init__()
        if step is not None and not callable(getattr(mixer, step, None)):
            raise ValueError(f"{type(mixer).__qualname__} has no method {step!r}")
        self.mixer = mixer
        self.step_name = step

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        return self.output(self.mixer(x), x.shape, "forward"), None

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One token x_t (B, 1, C) through the named step -> y_t (B, 1, C) and the state."""
        assert self.step_name is not None
        returned = getattr(self.mixer, self.step_name)(x_t, state)
        if not (isinstance(returned, tuple) and len(returned) == 2):
            raise TypeError(f"{self.step_name}(x_t, state) must return (y_t, state)")
        y_t, state = returned
        if isinstance(y_t, Tensor) and y_t.dim() == 2:
            y_t = y_t.unsqueeze(1)  # (B, C) -> (B, 1, C)
        return self.output(y_t, x_t.shape, self.step_name), state

    @staticmethod
    def output(returned: Any, shape: torch.Size, method: str) -> Tensor:
        """The tensor the checks read: `returned`, or its first element, of x's shape."""
        y = returned[0] if isinstance(returned, tuple | list) and returned else returned
        if not isinstance(y, Tensor) or y.shape != shape:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{method} returned {got}, not the input's shape {tuple(shape)}")
        return y


MixerFactory = Callable[..., MixerUnderTest]


def mixer_factory(make: Callable[[int], nn.Module], step: str | None = None) -> MixerFactory:
    """A factory the contract (and the timing row) calls as it calls an attention factory:
    `make(n_embd)` builds the module (n_head and block_size, which a plain module does not
    take, are ignored)."""

    def factory(
        n_embd: int, n_head: int | None = None, block_size: int | None = None
    ) -> MixerUnderTest:
        return MixerUnderTest(make(n_embd), step)

    return factory


def describe_output(mixer: MixerUnderTest, sizes: ContractSizes) -> str:
    """What the module's forward returns on the check input: a tensor, or a tuple whose
    first element the checks read."""
    x = random_input(sizes)
    name = type(mixer.mixer).__qualname__
    try:
        with torch.no_grad():
            returned = mixer.mixer(x)
    except Exception as error:  # the checks report it, each as a failed row
        return f"{name}'s forward raised {type(error).__name__}: {error}"
    if isinstance(returned, tuple | list):
        return (
            f"{name} returns a {type(returned).__name__} of {len(returned)}: the checks read "
            "its first element as the output"
        )
    return f"{name} returns a {type(returned).__name__}: the checks read it as the output"


def step_sequence(
    mixer: MixerUnderTest, x: Tensor, measure: Collection[int] = ()
) -> tuple[Tensor, dict[int, int]]:
    """Outputs (B, T, C) of x fed one token at a time through the step, and the bytes the
    state holds after each number of tokens in `measure` (read then: a state may be updated
    in place)."""
    state, outputs, state_bytes = None, [], {}
    for t in range(x.size(1)):
        y_t, state = mixer.step(x[:, t : t + 1], state)
        outputs.append(y_t)
        if t + 1 in measure:
            state_bytes[t + 1] = cache_bytes(state)
    return torch.cat(outputs, dim=1), state_bytes


NO_CACHE = "no cache API (name a recurrent step: mixer.step=<method>)"


def check_step_decoding(mixer: MixerUnderTest, sizes: ContractSizes) -> CheckResult:
    """The named step, one token at a time from state None: the outputs of the full forward
    pass at every position."""
    if mixer.step_name is None:
        return not_applicable(DECODING, NO_CACHE)
    x = random_input(sizes)
    with torch.no_grad():
        full, _ = mixer(x)
        decoded, _ = step_sequence(mixer, x)
    how = f"{mixer.step_name}(x_t, state) 1 token at a time from None"
    return decoding_result(decoded, full, sizes, how, "the full forward pass")


def check_step_state(mixer: MixerUnderTest, sizes: ContractSizes) -> CheckResult:
    """Bytes per sequence of the tensors the step's state holds after T/2 and T tokens."""
    if mixer.step_name is None:
        return not_applicable(DECODING_STATE, NO_CACHE)
    short, long = max(1, sizes.length // 2), sizes.length
    with torch.no_grad():
        _, state_bytes = step_sequence(mixer, random_input(sizes), (short, long))
    a, b = (state_bytes[t] / sizes.batch_size for t in (short, long))
    return state_result(short, long, a, b)


def check_no_matrix(mixer: MixerUnderTest, sizes: ContractSizes) -> CheckResult:
    return not_applicable(ATTENTION_MATRIX, "no attention matrix (a plain module shows none)")


MIXER_CHECKS: dict[str, Check] = {
    CAUSALITY_OUTPUTS: check_causality_outputs,
    CAUSALITY_GRADIENTS: check_causality_gradients,
    ATTENTION_MATRIX: check_no_matrix,
    DECODING: check_step_decoding,
    DECODING_STATE: check_step_state,
}


def run_mixer_contract(factory: MixerFactory, sizes: ContractSizes) -> list[CheckResult]:
    """The contract's rows for any sequence mixer (`mixer_factory`): causality checked,
    decoding checked through the named step, the rest not applicable."""
    return run_contract(factory, sizes, MIXER_CHECKS)
