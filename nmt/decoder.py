"""The decoder: a recurrent stack started from the bridged encoder state, with optional attention.

Each step (Luong et al. 2015): the previous target embedding (and, with input feeding, the
previous attentional vector) enters the LSTM stack; the top output `s_t` queries the encoder
memory; the attentional vector `tanh(W [s_t; context_t])` goes to the output projection. Without
attention the final encoder state, through the bridge, is all the decoder knows of the source.

Search talks to it only through `step(prev_tokens, state) -> (log_probs, state)` and
`DecoderState`'s row moves: `reorder` and `select_sentences`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from nmt.attention import make_attention
from nmt.cells import Gates, no_grad_float32, tanh_
from nmt.deferred import DeferredLinear
from nmt.encoder import EncoderOutput, RecurrentState
from nmt.rnn import RecurrentStack
from nmt.tokenizer import PAD_ID


@dataclass
class DecoderState:
    hidden: RecurrentState  # (num_layers, rows, hidden_size) each; c is None for gru / rnn
    memory: torch.Tensor  # (sentences, src_len, memory_size)
    keys: torch.Tensor | None  # (sentences, src_len, key_size), projected once per sentence
    src_mask: torch.Tensor  # (sentences, src_len) bool
    attentional: torch.Tensor | None  # (rows, attentional_size): last step's, for input feeding
    attention_weights: torch.Tensor | None = None  # (rows, src_len): last step's
    # Rows per sentence. Beam search's hypotheses of one sentence are `beams` consecutive rows
    # that share the sentence's memory, keys and mask: copying those for every beam would cost
    # more than the step's own attention.
    beams: int = 1

    def reorder(self, index: torch.Tensor, same_sources: bool = False) -> "DecoderState":
        """A state whose row i is this state's row index[i] (search reselects rows).

        `same_sources`: the caller promises that the new rows are each sentence's beams in turn
        (len(index) / sentences of them) and that row index[i] belongs to row i's sentence, as
        when beam search chooses among a sentence's beams or gives each sentence its beams. Then
        memory, keys and mask stay as they are. Otherwise every row is a sentence of its own
        (beams == 1) and they move with it.
        """
        if same_sources:
            return self._with_rows(index, self.memory, self.keys, self.src_mask, index.numel() // self.memory.size(0))
        if self.beams != 1:
            raise ValueError("rows of a beam state move within their sentence (same_sources) or by sentence (select_sentences)")
        return self.select_sentences(index)

    def select_sentences(self, sentences: torch.Tensor) -> "DecoderState":
        """Keep these sentences, in this order, with all their rows."""
        rows = sentences
        if self.beams != 1:
            rows = ((sentences * self.beams).unsqueeze(1) + torch.arange(self.beams, device=sentences.device)).view(-1)
        keys = None if self.keys is None else self.keys.index_select(0, sentences)
        memory, src_mask = self.memory.index_select(0, sentences), self.src_mask.index_select(0, sentences)
        return self._with_rows(rows, memory, keys, src_mask, self.beams)

    def _with_rows(self, rows: torch.Tensor, memory, keys, src_mask, beams: int) -> "DecoderState":
        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.index_select(0, rows)

        return DecoderState(
            hidden=self.hidden.index_select(rows),
            memory=memory,
            keys=keys,
            src_mask=src_mask,
            attentional=pick(self.attentional),
            attention_weights=pick(self.attention_weights),
            beams=beams,
        )


class Decoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_size: int,
        num_layers: int,
        memory_size: int,
        attention: str,
        input_feeding: bool,
        dropout: float,
        tie_embeddings: bool,
        cell: str = "lstm",
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.attention = make_attention(attention, hidden_size, memory_size)
        self.input_feeding = input_feeding and self.attention is not None
        # A tied output projection reads vectors of the embedding size.
        self.attentional_size = embed_dim if tie_embeddings else hidden_size
        rnn_input_size = embed_dim + (self.attentional_size if self.input_feeding else 0)
        self.rnn = RecurrentStack(cell, rnn_input_size, hidden_size, num_layers, dropout=dropout)
        combine_in = hidden_size + (memory_size if self.attention is not None else 0)
        self.combine: nn.Linear | None = None
        if self.attention is not None or self.attentional_size != hidden_size:
            self.combine = nn.Linear(combine_in, self.attentional_size, bias=False)
        self.output = nn.Linear(self.attentional_size, vocab_size)
        if tie_embeddings:
            self.output.weight = self.embed.weight
        # Search's tables for the first layer's input (_search_first_input), kept for one
        # `search_tables` block; and, set by nmt.quantize, an int8 twin of that input's feed half
        # (in tuples: neither is a weight of the model).
        self._in_search_block = False
        self._search_tables: tuple | None = None
        self.int8_feed: tuple[nn.Module] | None = None

    @property
    def fused(self) -> bool:
        """Without input feeding no step depends on the last one's output: one LSTM call for all."""
        return not self.input_feeding

    def init_state(self, encoder_output: EncoderOutput, hidden: RecurrentState) -> DecoderState:
        memory = encoder_output.memory
        attentional = None
        if self.input_feeding:
            attentional = memory.new_zeros(memory.size(0), self.attentional_size)
        return DecoderState(
            hidden=hidden,
            memory=memory,
            keys=self.attention.project_keys(memory) if self.attention is not None else None,
            src_mask=encoder_output.mask,
            attentional=attentional,
        )

    def forward(self, tgt_in: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Teacher forcing: tgt_in (batch, tgt_len) -> logits (batch, tgt_len, vocab), state."""
        attentional, state, _ = self._teacher_force(tgt_in, state, record=False)
        return self.output(attentional), state  # (batch, tgt_len, vocab)

    def forward_packed(self, tgt_in: torch.Tensor, tgt_lengths: list[int], state: DecoderState) -> torch.Tensor:
        """Teacher forcing over the real target positions only, for training.

        tgt_in (batch, tgt_len) with rows ordered longest target first, tgt_lengths (batch,) ->
        logits (tokens, vocab) in time-major packed order: step 0 of every row, then step 1 of the
        rows still going, ... (`pack_targets` gives the targets in that order). A sentence that
        has ended leaves the batch, so padding costs (almost) no decoder, projection or loss work
        and batches may mix lengths freely.
        """
        embedded = self.dropout(self.embed(tgt_in))  # (batch, tgt_len, embed_dim)
        if self.fused:
            attentional, _, _ = self._run(embedded, state)
            packed = pack_padded_sequence(attentional, torch.tensor(tgt_lengths), batch_first=True).data
        else:
            packed, _ = self._teacher_force_feeding(embedded, state, tgt_lengths)
        return self.output(packed)  # (tokens, vocab)

    def record_gates(self, tgt_in: torch.Tensor, state: DecoderState) -> list[Gates]:
        """Teacher-force tgt_in and return every layer's gates, (batch, tgt_len, hidden) each.
        Over a search's own output this replays exactly the states the search went through."""
        return self._teacher_force(tgt_in, state, record=True)[2]

    def _teacher_force(self, tgt_in, state, record: bool) -> tuple[torch.Tensor, DecoderState, list[Gates]]:
        embedded = self.dropout(self.embed(tgt_in))  # (batch, tgt_len, embed_dim)
        if self.fused:
            return self._run(embedded, state, record)
        if not record:
            return (*self._teacher_force_feeding(embedded, state), [])
        outputs, steps_gates = [], []
        for t in range(embedded.size(1)):
            step_out, state, gates = self._run(embedded[:, t : t + 1], state, record)
            outputs.append(step_out)
            steps_gates.append(gates)
        gates = [
            {name: torch.cat([step[layer][name] for step in steps_gates], dim=1) for name in steps_gates[0][layer]}
            for layer in range(len(steps_gates[0]))
        ]
        return torch.cat(outputs, dim=1), state, gates

    def step(self, prev_tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One decoding step for search: prev_tokens (batch,) -> log_probs (batch, vocab), state."""
        if self.input_feeding:
            if not self._search_table_pays(prev_tokens.device):
                embedded = self.dropout(self.embed(prev_tokens))  # (batch, embed_dim)
                # The first layer reads [embedding; last attentional vector]: one product for both.
                attentional = state.attentional.to(embedded.dtype)
                projected = self.rnn.cells[0].project_input(torch.cat([embedded, attentional], dim=-1))
            else:
                projected = self._search_first_input(prev_tokens, state.attentional)
            hidden = state.hidden
            c = None if hidden.c is None else list(hidden.c.unbind(0))
            attentional, h, c, weights = self._feeding_step(projected, list(hidden.h.unbind(0)), c, state)
            state = _after_step(state, h, c, attentional, weights)
        else:
            embedded = self.dropout(self.embed(prev_tokens.unsqueeze(1)))  # (batch, 1, embed_dim)
            attentional, state, _ = self._run(embedded, state)
            attentional = attentional.squeeze(1)
        logits = self.output(attentional)  # (batch, vocab)
        return torch.log_softmax(logits.float(), dim=-1), state

    @contextmanager
    def search_tables(self) -> Iterator[None]:
        """A block of searches over weights that do not change inside it. Its search steps look
        the first layer's embedding half up in a table of every target piece's projection, made
        at the first step that can use it and dropped when the block ends, so the next block
        sees the weights as they are then. (A table kept across blocks and keyed on the weights'
        version counters went stale in training: torch's fused Adam leaves them unchanged.)"""
        if self._in_search_block:  # nested: the outer block's table serves
            yield
            return
        self._in_search_block = True
        try:
            yield
        finally:
            self._in_search_block, self._search_tables = False, None

    def _search_table_pays(self, device: torch.device) -> bool:
        """The table serves search only (inside `search_tables`; no gradients, no dropout, no
        autocast), and only while it stays small: vocab x 4 * hidden floats, 32 MB for the
        reference model."""
        searching = self._in_search_block and not self.training and not torch.is_grad_enabled()
        if not searching or torch.is_autocast_enabled(device.type):
            return False
        return self.embed.num_embeddings * self.rnn.cells[0].weight_ih.size(0) <= _SEARCH_TABLE_FLOATS

    def _search_first_input(self, prev_tokens: torch.Tensor, attentional: torch.Tensor) -> torch.Tensor:
        """W_x [embed(y); attentional] + b_x, the first layer's input projection at a search step
        (no gradients, no dropout): the embedding half is looked up in a table of every target
        piece's projection, so a step multiplies only the attentional half (a seventh of a beam
        step's products for the reference model). The table lasts one `search_tables` block."""
        if self._search_tables is None:
            first = self.rnn.cells[0]
            embed_dim = self.embed.embedding_dim
            weight_ih = first.weight_ih.detach()
            table = nn.functional.linear(self.embed.weight.detach(), weight_ih[:, :embed_dim], first.bias_ih.detach())
            self._search_tables = (table, weight_ih[:, embed_dim:].contiguous())  # table: (vocab, blocks * hidden)
        table, feed_weight = self._search_tables
        if self.int8_feed is not None:
            feed = self.int8_feed[0](attentional)
        else:
            feed = nn.functional.linear(attentional, feed_weight)
        return table.index_select(0, prev_tokens) + feed  # (batch, blocks * hidden)

    # --- input feeding: one step at a time, straight through the cells -------------------------
    # Each step needs the previous step's output, so torch's sequence kernels cannot run the
    # target in one call; calling them once per step costs more than the step itself. The cells
    # are run directly instead, and the first layer's embedding half is projected for the whole
    # target in one product (only the attentional half is left to each step).
    def _teacher_force_feeding(self, embedded: torch.Tensor, state: DecoderState, lengths: list[int] | None = None):
        """-> (batch, tgt_len, attentional_size) and the final state; with `lengths` (rows longest
        first) the real positions only, (tokens, attentional_size) packed time-major, and no state.

        With lengths the loop runs in stages: when the rows still going fall below
        `_SHRINK_BELOW` of the stage's rows, the finished ones are cut off (state, memory, keys).
        Not at every step: the backward of each cut fills a zero tensor of the whole memory.
        """
        first = self.rnn.cells[0]
        embed_dim = embedded.size(-1)
        embed_weight = first.weight_ih[:, :embed_dim]
        feed_weight = first.weight_ih[:, embed_dim:]  # (blocks * hidden, attentional_size)
        # Per-layer lists rather than stacked tensors: cheaper to step and to cut.
        h = list(state.hidden.h.unbind(0))
        c = None if state.hidden.c is None else list(state.hidden.c.unbind(0))
        attentional = state.attentional
        assert attentional is not None  # input feeding starts from zeros (init_state)
        batch_size, tgt_len = embedded.shape[:2]
        running = None if lengths is None else _rows_running(lengths)
        stages = [(0, tgt_len, batch_size)] if running is None else _stages(running)
        # Training defers the per-step products' weight gradients (nmt/deferred.py).
        products = _StepProducts.of(self, feed_weight) if torch.is_grad_enabled() else None
        outputs, weights = [], None
        for start, end, rows in stages:
            stage_embedded = embedded
            if rows < attentional.size(0):
                h = [layer_h[:rows] for layer_h in h]
                c = None if c is None else [layer_c[:rows] for layer_c in c]
                attentional = attentional[:rows]
                state = replace(state, memory=state.memory[:rows], keys=state.keys[:rows], src_mask=state.src_mask[:rows])
            if (rows, end - start) != (batch_size, tgt_len):
                stage_embedded = embedded[:rows, start:end]
            # (rows, steps, blocks * hidden): W_emb y_t + b for the stage's steps at once. unbind,
            # not [:, t]: the backward of a slice fills a zero tensor of the whole stage per step.
            projected = torch.nn.functional.linear(stage_embedded, embed_weight, first.bias_ih).unbind(1)
            for t, step_projected in enumerate(projected, start):
                if products is None:
                    step_projected = step_projected + torch.nn.functional.linear(attentional, feed_weight)
                else:
                    step_projected = step_projected + products.feed(attentional)
                attentional, h, c, weights = self._feeding_step(step_projected, h, c, state, products)
                if running is not None and running[t] < rows:
                    outputs.append(attentional[: running[t]])
                else:
                    outputs.append(attentional)
        if running is not None:
            return torch.cat(outputs), None  # (tokens, attentional_size)
        return torch.stack(outputs, dim=1), _after_step(state, h, c, attentional, weights)  # (batch, tgt_len, attentional_size)

    def _feeding_step(
        self, projected: torch.Tensor, h: list[torch.Tensor], c: list[torch.Tensor] | None, state,
        products: _StepProducts | None = None,
    ):  # fmt: skip
        """projected: the first layer's input projection (batch, blocks * hidden); h, c: each
        layer's state (batch, hidden) -> the attentional vector (batch, attentional_size), the
        new h and c lists, and the attention weights (batch, src_len). `products`: training's
        deferred-gradient products; without them the cells' own (int8 when quantized)."""
        new_h, new_c = [], []
        for layer, cell in enumerate(self.rnn.cells):
            if layer > 0:
                below = new_h[-1]
                if self.rnn.dropout:
                    below = nn.functional.dropout(below, self.rnn.dropout, self.training)
                projected = cell.project_input(below) if products is None else products.inputs[layer](below)
            projected_h = None if products is None else products.hidden[layer](h[layer])
            h_t, c_t, _ = cell.step(projected, h[layer], None if c is None else c[layer], projected_h=projected_h)
            new_h.append(h_t)
            new_c.append(c_t)
        rnn_output = new_h[-1].unsqueeze(1)  # (batch, 1, hidden)
        assert self.combine is not None
        context, weights = self._attend(rnn_output, state)
        features = torch.cat([rnn_output, context.to(rnn_output.dtype)], dim=-1)  # (batch, 1, hidden + memory)
        if products is None:
            combined = self.combine(features).squeeze(1)
        else:
            combined = products.combine(features.squeeze(1))
        # (batch, attentional_size); `combined` is fresh, so translation can overwrite it.
        attentional = self.dropout(tanh_(combined) if no_grad_float32(combined) else torch.tanh(combined))
        return attentional, new_h, None if c is None else new_c, weights[:, 0]

    def _attend(self, rnn_output: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """rnn_output (rows, steps, hidden) -> context (rows, steps, memory_size) and weights
        (rows, steps, src_len). A sentence's beams query its memory together, as the
        beams * steps positions of one query."""
        assert self.attention is not None and state.keys is not None
        rows, steps = rnn_output.shape[:2]
        query = rnn_output.reshape(rows // state.beams, state.beams * steps, -1)
        context, weights = self.attention(query, state.keys, state.memory, state.src_mask)
        return context.reshape(rows, steps, -1), weights.reshape(rows, steps, -1)

    def _run(
        self, embedded: torch.Tensor, state: DecoderState, record: bool = False
    ) -> tuple[torch.Tensor, DecoderState, list[Gates]]:
        """embedded (batch, steps, embed_dim) -> attentional vectors (batch, steps, size), state,
        and with `record` every layer's gates.

        With input feeding, `steps` must be 1: each input needs the previous step's output.
        """
        rnn_input = embedded
        if self.input_feeding:
            assert embedded.size(1) == 1 and state.attentional is not None
            rnn_input = torch.cat([embedded, state.attentional.unsqueeze(1)], dim=-1)
        out = self.rnn(rnn_input, initial=(state.hidden.h, state.hidden.c), record=record)
        rnn_output = out.outputs  # (batch, steps, hidden)
        weights = None
        features = rnn_output
        if self.attention is not None:
            assert state.keys is not None
            context, weights = self._attend(rnn_output, state)
            features = torch.cat([rnn_output, context], dim=-1)  # (batch, steps, hidden + memory)
        if self.combine is not None:
            features = torch.tanh(self.combine(features))  # (batch, steps, attentional_size)
        attentional = self.dropout(features)
        new_state = replace(
            state,
            hidden=RecurrentState(out.h, out.c),
            attentional=attentional[:, -1] if self.input_feeding else None,
            attention_weights=None if weights is None else weights[:, -1],
        )
        return attentional, new_state, out.gates


@dataclass
class _StepProducts:
    """The products the input-feeding loop makes at every step, with deferred weight gradients:
    the first layer's feed half, each layer's hidden projection, each higher layer's input
    projection, and the attentional combination. One set per forward pass."""

    feed: DeferredLinear
    hidden: list[DeferredLinear]
    inputs: list[DeferredLinear | None]  # None for the first layer (fed by `feed` + embeddings)
    combine: DeferredLinear

    @classmethod
    def of(cls, decoder: "Decoder", feed_weight: torch.Tensor) -> "_StepProducts":
        cells = decoder.rnn.cells
        assert decoder.combine is not None
        return cls(
            feed=DeferredLinear(feed_weight),
            hidden=[DeferredLinear(cell.weight_hh, cell.bias_hh) for cell in cells],
            inputs=[None, *(DeferredLinear(cell.weight_ih, cell.bias_ih) for cell in cells[1:])],
            combine=DeferredLinear(decoder.combine.weight, decoder.combine.bias),
        )


# The largest first-layer table search keeps (floats): 64 MB; beyond it a step multiplies the
# embeddings as training does.
_SEARCH_TABLE_FLOATS = 1 << 24

# A stage ends when fewer than this share of its rows are still running. Not critical: 0.5 / 0.8 /
# 0.95 trained random batches at 870 / 855 / 888 target tokens/s (alternated in one process).
_SHRINK_BELOW = 0.8


def _rows_running(lengths: list[int]) -> list[int]:
    """lengths (longest first) -> how many rows are still running at each step."""
    if any(later > earlier for earlier, later in zip(lengths, lengths[1:])):
        raise ValueError("forward_packed needs the rows ordered longest target first")
    running, row = [], len(lengths)
    for t in range(lengths[0] if lengths else 0):
        while row and lengths[row - 1] <= t:
            row -= 1
        running.append(row)
    return running


def _stages(running: list[int]) -> list[tuple[int, int, int]]:
    """-> (first step, end step, rows) per stage, cutting finished rows once they are many."""
    stages, start = [], 0
    for t in range(1, len(running) + 1):
        if t == len(running) or running[t] < _SHRINK_BELOW * running[start]:
            stages.append((start, t, running[start]))
            start = t
    return stages


def _after_step(state: DecoderState, h: list[torch.Tensor], c: list[torch.Tensor] | None,
                attentional: torch.Tensor, weights: torch.Tensor) -> DecoderState:  # fmt: skip
    """The state after an input-feeding step, from per-layer lists of (batch, hidden) states."""
    hidden = RecurrentState(torch.stack(h), None if c is None else torch.stack(c))
    return replace(state, hidden=hidden, attentional=attentional, attention_weights=weights)
