"""Recurrent cells of the training model: one torch class per cell type (``LMConfig.cell_type``).

Each cell (an nn.Module) owns the layer's parameters ``weight`` [rows, X+H] and ``bias`` [rows]
(in the LM: ``rnn.weight``, ``rnn.bias``), with rows = n_gates * H, gate-major (row = gate*H + unit,
gates in the row-block order of ``gates``, as hwrnn.gates), columns [x_t ; h_{t-1}]; and its
recurrence, its step-trace keys, its initial state and its bias init. The LM quantizes the whole
matrix with ONE scale (its weight code's quantizer, sw_ref.weight_quantizers; balanced:
sw_ref.quantizers.quantize_weight) and hands the cell the input part
xw = x_t W_x^T + b of every step and W_h^T; the cell runs the steps.

Notation: Q_a = quantize_activation(., abits) (abits-bit codes n / (2**abits - 1); identity in
float mode); act = sigmoid, or tanh if cfg.candidate == "tanh"; W_k [x; h] is gate k's row block.

=========  ====================  ==============================================================
cell_type  gates (row blocks)    step (h' the new activation; state carried besides h)
=========  ====================  ==============================================================
lstm       i, f, g, o  (4H)      He et al.: i, f, o = sigmoid(z); g = act(z_g); c' = f*c + i*g
                                 (rounded to cfg.cell's format if set, STE); h' = Q_a(o*sigmoid(c'))
gru        u, r, g     (3H)      He et al. 3.3, reset before the product: u, r = sigmoid(W [x; h] + b);
                                 rh = Q_a(r*h); g = act(W_g [x; rh] + b_g);
                                 h' = Q_a(clamp((1-u)*h + u*g, 0, 1))
gru_ott    u, r, g     (3H)      Ott et al., reset after the product: u, r as gru;
                                 g = act(W_g[:, :X] x + b_g + r * (W_g[:, X:] h)); h' as gru
rnn        g           (H)       vanilla: h' = Q_a(clamp(act(W [x; h] + b), 0, 1))
=========  ====================  ==============================================================

Fused recurrence: the LSTM without a hardware cell format (``fusable``) also runs a whole window as one
autograd node with a hand-written backward, ``recurrence_fused`` (sw_ref.fused_recurrence; the LM's
default in training): the same outputs bit for bit, gradients equal to rounding. ``recurrence`` (step
by step under autograd) stays the reference and the path of step_trace, cell formats and other cells.

State: the LM's ``(h, c)`` tuple for every cell. Only the LSTM has a cell state; for the other
cells c is an empty [B, 0] tensor (carried, never read), so the tuple API (detach, checkpoints)
stays the same. Initial state: 'zero' -> h0 = 0 (LSTM: c0 = 0); 'half' -> h0 = Q_a(0.5) (LSTM:
c0 = 0.5). Bias init: LSTM 0 except the forget-gate rows = 1.0; the other cells 0.
Weight init U(-b, b), b the weight coding's bound (sw_ref.weight_quantizers, hwrnn ``init_bound``):
1/sqrt(H) for the balanced code and float weights, Glorot sqrt(6 / (X + H)) for Ott et al.'s codes.

Step trace keys (``trace_keys``, each [T, ...] for one sequence): 'z' (the arguments of the gate
functions, [T, rows] gate-major; gru_ott: z_g is the full argument W_gx x + b_g + r*(W_gh h)),
one key per gate, 'rh' (gru), 'c' (lstm), 'h'.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from hwrnn.cell_state import CellState
from hwrnn.gates import GruGates, GruOttGates, LstmGates, RnnGates
from sw_ref.fused_recurrence import lstm_recurrence_fused
from sw_ref.quantizers import quantize_activation

#: default cell type (LMConfig.cell_type)
DEFAULT_CELL_TYPE = "lstm"


class Cell(nn.Module):
    """One recurrent cell type (module docstring). Subclasses set the class attributes and
    ``recurrence``; parameters ``weight`` [n_gates*H, X+H] and ``bias`` [n_gates*H]."""

    #: LMConfig.cell_type value
    name: ClassVar[str]
    #: short label in results entry names ("" for the LSTM, whose names carry none)
    label: ClassVar[str]
    #: gates in row-block order of the weight matrix
    gates: ClassVar[tuple[str, ...]]
    #: whether the cell carries a cell state c besides h
    has_cell_state: ClassVar[bool] = False
    #: keys of one step in step_trace (besides 'x' and 'logits', which the LM adds)
    trace_keys: ClassVar[tuple[str, ...]]

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        H, X = cfg.hidden, cfg.input
        self.weight = nn.Parameter(torch.empty(self.n_gates * H, X + H))
        self.bias = nn.Parameter(torch.empty(self.n_gates * H))

    @classmethod
    def rows_for(cls, hidden: int) -> int:
        return len(cls.gates) * hidden

    @property
    def n_gates(self) -> int:
        return len(self.gates)

    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self):
        """weight ~ U(-b, b), b = the weight coding's init_bound (1/sqrt(H) balanced and float,
        sqrt(6 / (X + H)) Ott's codes); bias 0 (then ``_init_bias``)."""
        r = self.cfg.weight_quantizer().init_bound(*self.weight.shape, self.cfg.hidden)
        self.weight.uniform_(-r, r)
        self.bias.zero_()
        self._init_bias()

    def _init_bias(self):
        """Cell-specific bias init after the zero fill (none by default)."""

    def _qa(self, x):
        return quantize_activation(x, self.cfg.abits)

    def _act(self, z):
        """act: the candidate's function (sigmoid, or tanh if cfg.candidate == 'tanh')."""
        return torch.tanh(z) if self.cfg.candidate == "tanh" else torch.sigmoid(z)

    def init_state(self, bsz: int, dtype, device):
        """(h0 [B, H], c0): h0 = 0 ('zero') or Q_a(0.5) ('half'); c0 an empty [B, 0] tensor."""
        H = self.cfg.hidden
        if self.cfg.init_state == "zero":
            h = torch.zeros(bsz, H, dtype=dtype, device=device)
        else:
            h = self._qa(torch.full((bsz, H), 0.5, dtype=dtype, device=device))
        return h, torch.zeros(bsz, 0, dtype=dtype, device=device)

    def state_from(self, state, dtype):
        """The (h, c) of batch 1 for step_trace from a given ``state``: (h0, c0) with vectors of
        shape [H] or [1, H] (c0 ignored, may be None, for cells without a cell state), or h0."""
        if isinstance(state, (tuple, list)):
            h = state[0]
        else:
            h = state
        h = torch.as_tensor(h).to(dtype).reshape(1, -1)
        return h, torch.zeros(1, 0, dtype=dtype, device=h.device)

    def recurrence(self, xw, Wh_t, h, c, trace=None):
        """Run the steps. xw: [T, B, rows] input part x_t W_x^T + b of each step; Wh_t: [H, rows]
        (W_h transposed); (h, c) the state. Returns (list of T h_t [B, H], (h, c)); appends each
        step's values to ``trace[k]`` for k in trace_keys when ``trace`` is a dict of lists."""
        raise NotImplementedError

    @property
    def fusable(self) -> bool:
        """Whether ``recurrence_fused`` applies to this cell (only the LSTM without a hardware cell
        format has one)."""
        return False

    def recurrence_fused(self, xw, Wh_t, h, c):
        """The recurrence of a whole window as one autograd node with a hand-written backward
        (sw_ref.fused_recurrence), where ``fusable``: (hs [T, B, H], (h, c)), T >= 1, outputs
        bit-identical to ``recurrence``'s (hs = its h_t stacked), gradients equal to rounding."""
        raise NotImplementedError(f"no fused recurrence for the {self.name} cell")


class LstmCell(Cell):
    """He et al.'s quantized LSTM (module docstring); gates i, f, g, o; cell state c in float, or
    rounded to the hardware cell format ``cfg.cell`` (hwrnn.cell_state) with a straight-through
    gradient."""

    name = LstmGates.name
    label = ""
    gates = LstmGates().gates  # the row-block order is hwrnn's (hwrnn.gates)
    has_cell_state = LstmGates().has_cell_state
    trace_keys = ("z", "i", "f", "g", "o", "c", "h")

    def __init__(self, cfg):
        super().__init__(cfg)
        #: the hardware cell-state format emulated in training (hwrnn.cell_state), or None
        self.cell_state = CellState.parse(cfg.cell) if cfg.cell is not None else None

    def _init_bias(self):
        H = self.cfg.hidden
        self.bias[H:2 * H].fill_(1.0)  # forget gate

    def init_state(self, bsz: int, dtype, device):
        """(h0, c0) each [B, H]: zeros ('zero'), or h0 = Q_a(0.5), c0 = 0.5 ('half', as hwrnn.config
        defines it for the integer model and the hardware; the authors' code also rounds c0,
        round_bit(sigmoid(0)), which differs for c0 only)."""
        H = self.cfg.hidden
        if self.cfg.init_state == "zero":
            h = torch.zeros(bsz, H, dtype=dtype, device=device)
            return h, h.clone()
        c = torch.full((bsz, H), 0.5, dtype=dtype, device=device)
        return self._qa(c.clone()), c

    def state_from(self, state, dtype):
        return tuple(torch.as_tensor(s).to(dtype).reshape(1, -1) for s in state)

    def _cell_round(self, c):
        """Round c to the hardware cell format (straight-through gradient): fixed:I.F rounds half
        up to F fraction bits and saturates; float formats round to nearest even
        (hwrnn.cell_state: the format's round_values). Training sees the cell the integer model uses."""
        if self.cell_state is None:
            return c
        q = self.cell_state.round_values(c)
        return c + (q - c).detach()

    @property
    def fusable(self) -> bool:
        """True without a hardware cell format (whose rounding runs only on the step-by-step path)."""
        return self.cell_state is None

    def recurrence_fused(self, xw, Wh_t, h, c):
        if not self.fusable:
            raise ValueError(f"the fused recurrence does not emulate the cell format {self.cfg.cell}")
        hs, h, c = lstm_recurrence_fused(xw, Wh_t, h, c, self.cfg.abits, self.cfg.candidate)
        return hs, (h, c)

    def recurrence(self, xw, Wh_t, h, c, trace=None):
        H = self.cfg.hidden
        sig_cand = self.cfg.candidate == "sigmoid"
        outs = []
        for xw_t in xw.unbind(0):   # unbind: one stack in backward (xw[t] would zero-fill [T,B,4H] per step)
            z = torch.addmm(xw_t, h, Wh_t)
            if sig_cand:
                a = torch.sigmoid(z)
                i, f, g, o = a.split(H, dim=1)
            else:
                zi, zf, zg, zo = z.split(H, dim=1)
                i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
            c = self._cell_round(torch.addcmul(f * c, i, g))
            h = self._qa(o * torch.sigmoid(c))
            outs.append(h)
            if trace is not None:
                for k, v in (("z", z), ("i", i), ("f", f), ("g", g), ("o", o), ("c", c), ("h", h)):
                    trace[k].append(v)
        return outs, (h, c)


class GruCell(Cell):
    """He et al.'s GRU (their section 3.3), reset applied to h before the product (module docstring):
    u = sigmoid(W_u [x; h] + b_u), r = sigmoid(W_r [x; h] + b_r), rh = Q_a(r * h),
    g = act(W_g [x; rh] + b_g), h' = Q_a(clamp((1 - u) * h + u * g, 0, 1))."""

    name = GruGates.name
    label = "GRU"
    gates = GruGates().gates
    trace_keys = ("z", "u", "r", "rh", "g", "h")

    def recurrence(self, xw, Wh_t, h, c, trace=None):
        H = self.cfg.hidden
        W_ur = Wh_t[:, :2 * H].contiguous()
        W_g = Wh_t[:, 2 * H:].contiguous()
        outs = []
        for xw_t in xw.unbind(0):
            z_ur = torch.addmm(xw_t[:, :2 * H], h, W_ur)
            u, r = torch.sigmoid(z_ur).split(H, dim=1)
            rh = self._qa(r * h)
            z_g = torch.addmm(xw_t[:, 2 * H:], rh, W_g)
            g = self._act(z_g)
            h = self._qa(torch.clamp((1 - u) * h + u * g, 0.0, 1.0))
            outs.append(h)
            if trace is not None:
                for k, v in (("z", torch.cat([z_ur, z_g], 1)), ("u", u), ("r", r), ("rh", rh), ("g", g), ("h", h)):
                    trace[k].append(v)
        return outs, (h, c)


class GruOttCell(Cell):
    """Ott et al.'s GRU, reset applied after the product (module docstring): u, r as the GRU,
    g = act(W_g[:, :X] x + b_g + r * (W_g[:, X:] h)), h' = Q_a(clamp((1 - u) * h + u * g, 0, 1))."""

    name = GruOttGates.name
    label = "GRU-Ott"
    gates = GruOttGates().gates
    trace_keys = ("z", "u", "r", "g", "h")

    def recurrence(self, xw, Wh_t, h, c, trace=None):
        H = self.cfg.hidden
        outs = []
        for xw_t in xw.unbind(0):
            hw = h @ Wh_t                                    # [B, 3H]: W_h h of every gate
            z_ur = xw_t[:, :2 * H] + hw[:, :2 * H]
            u, r = torch.sigmoid(z_ur).split(H, dim=1)
            z_g = xw_t[:, 2 * H:] + r * hw[:, 2 * H:]
            g = self._act(z_g)
            h = self._qa(torch.clamp((1 - u) * h + u * g, 0.0, 1.0))
            outs.append(h)
            if trace is not None:
                for k, v in (("z", torch.cat([z_ur, z_g], 1)), ("u", u), ("r", r), ("g", g), ("h", h)):
                    trace[k].append(v)
        return outs, (h, c)


class RnnCell(Cell):
    """Vanilla RNN (module docstring): h' = Q_a(clamp(act(W [x; h] + b), 0, 1))."""

    name = RnnGates.name
    label = "RNN"
    gates = RnnGates().gates
    trace_keys = ("z", "g", "h")

    def recurrence(self, xw, Wh_t, h, c, trace=None):
        outs = []
        for xw_t in xw.unbind(0):
            z = torch.addmm(xw_t, h, Wh_t)
            g = self._act(z)
            h = self._qa(torch.clamp(g, 0.0, 1.0))
            outs.append(h)
            if trace is not None:
                for k, v in (("z", z), ("g", g), ("h", h)):
                    trace[k].append(v)
        return outs, (h, c)


#: every cell type, by LMConfig.cell_type
CELLS: tuple[type[Cell], ...] = (LstmCell, GruCell, GruOttCell, RnnCell)
CELL_TYPES: tuple[str, ...] = tuple(c.name for c in CELLS)


def cell_class(name) -> type[Cell]:
    """The cell class of a cell type name; ValueError (one line) for an unknown one."""
    for cls in CELLS:
        if cls.name == name:
            return cls
    raise ValueError(f"cell_type must be one of {CELL_TYPES}, got {name!r}")
