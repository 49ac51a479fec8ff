"""The decoder: a recurrent stack started from the bridged encoder state, with optional attention.

Each step (Luong et al. 2015): the previous target embedding (and, with input feeding, the
previous attentional vector) enters the recurrent stack; the top output `s_t` queries the encoder
memory; the attentional vector `tanh(W [s_t; context_t])` goes to the output projection. Without
attention the final encoder state, through the bridge, is all the decoder knows of the source.

One step (`_advance`) serves search (`step`), training's input-feeding loop (`forward`,
`forward_packed`) and the gate inspector (`record_gates`); search may hand `step` a `StepTable`
of the first layer's embedding half, made once for a call over fixed weights. Without input feeding no step needs the
last one's output, so teacher forcing runs the whole target through the stack in one call.
Search talks to the decoder through the decoding protocol of `nmt.search.protocol`: `step` and
`DecoderState`'s row moves `reorder_beams` and `select_sentences`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from nmt.data.special import PAD_ID
from nmt.model.attention import make_attention
from nmt.model.cells import Gates, no_grad_float32, tanh_
from nmt.model.encoder import EncoderOutput, RecurrentState
from nmt.model.rnn import RecurrentStack
from nmt.model.word_dropout import WordDropout

# Training's input-feeding loop cuts finished sentences off when fewer than this share of a
# stage's rows are still running. Not critical: 0.5 / 0.8 / 0.95 trained random batches at
# 870 / 855 / 888 target tokens/s (alternated in one process).
SHRINK_BELOW = 0.8
# The largest StepTable (floats): 64 MB; beyond it a search step multiplies the embeddings.
TABLE_MAX_FLOATS = 1 << 24


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

    def reorder_beams(self, parents: torch.Tensor) -> DecoderState:
        """Row i of the new state continues row parents[i], a row of the same sentence; every
        sentence gets len(parents) / sentences beams. Memory, keys and mask stay shared."""
        beams = parents.numel() // self.memory.size(0)
        return self._with_rows(parents, self.memory, self.keys, self.src_mask, beams)

    def select_sentences(self, sentences: torch.Tensor) -> DecoderState:
        """Keep these sentences, in this order, with all their beams. A sentence named twice is
        decoded twice from here on, independently."""
        rows = sentences
        if self.beams != 1:
            rows = ((sentences * self.beams).unsqueeze(1) + torch.arange(self.beams, device=sentences.device)).view(-1)
        keys = None if self.keys is None else self.keys.index_select(0, sentences)
        memory, src_mask = self.memory.index_select(0, sentences), self.src_mask.index_select(0, sentences)
        return self._with_rows(rows, memory, keys, src_mask, self.beams)

    def join(self, other: DecoderState) -> DecoderState:
        """This state's sentences, then `other`'s, with as many beams each. The shorter sources'
        memory, keys and mask are padded (masked out) to the longer's length."""
        if other.beams != self.beams:
            raise ValueError(f"cannot join states of {self.beams} and {other.beams} beams per sentence")
        src_len = max(self.memory.size(1), other.memory.size(1))

        def cat(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
            if first is None or second is None:
                return None
            return torch.cat([_pad_source(first, src_len), _pad_source(second, src_len)])

        c = None if self.hidden.c is None else torch.cat([self.hidden.c, other.hidden.c], dim=1)
        return DecoderState(
            hidden=RecurrentState(torch.cat([self.hidden.h, other.hidden.h], dim=1), c),
            memory=cat(self.memory, other.memory),
            keys=cat(self.keys, other.keys),
            src_mask=cat(self.src_mask, other.src_mask),
            attentional=None if self.attentional is None else torch.cat([self.attentional, other.attentional]),
            attention_weights=cat(self.attention_weights, other.attention_weights),
            beams=self.beams,
        )

    def _with_rows(self, rows: torch.Tensor, memory, keys, src_mask, beams: int) -> DecoderState:
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


def _pad_source(tensor: torch.Tensor, src_len: int) -> torch.Tensor:
    """(rows, length, ...) -> (rows, src_len, ...), zero (False) beyond its length."""
    missing = src_len - tensor.size(1)
    if missing == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(tensor.size(0), missing, *tensor.shape[2:])], dim=1)


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
        word_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        # The previous target words of teacher forcing; search feeds its own words and is not trained.
        self.word_dropout = WordDropout(word_dropout)
        self.dropout = nn.Dropout(dropout)
        self.attention = make_attention(attention, hidden_size, memory_size)
        # Feed the previous attentional vector into the next step; without attention there is none.
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

    # --- teacher forcing -----------------------------------------------------------------------
    def _embed_targets(self, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.word_dropout(self.embed(tgt_in)))

    def forward(self, tgt_in: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Teacher forcing: tgt_in (batch, tgt_len) -> logits (batch, tgt_len, vocab)."""
        embedded = self._embed_targets(tgt_in)  # (batch, tgt_len, embed_dim)
        if self.input_feeding:
            return self.output(self._feed_through(embedded, state))
        return self.output(self._run_sequence(embedded, state))

    def forward_packed(self, tgt_in: torch.Tensor, tgt_lengths: list[int], state: DecoderState) -> torch.Tensor:
        """Teacher forcing over the real target positions only, for training.

        tgt_in (batch, tgt_len) with rows ordered longest target first, tgt_lengths (batch,) ->
        logits (tokens, vocab) in time-major packed order: step 0 of every row, then step 1 of the
        rows still going, ... (`pack_targets` gives the targets in that order). A sentence that
        has ended leaves the batch, so padding costs (almost) no decoder, projection or loss work
        and batches may mix lengths freely.
        """
        embedded = self._embed_targets(tgt_in)  # (batch, tgt_len, embed_dim)
        if self.input_feeding:
            return self.output(self._feed_through(embedded, state, tgt_lengths))
        attentional = self._run_sequence(embedded, state)  # (batch, tgt_len, attentional_size)
        return self.output(pack_padded_sequence(attentional, torch.tensor(tgt_lengths), batch_first=True).data)

    def _run_sequence(self, embedded: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Without input feeding: the whole target through the stack in one call, then attention
        for every step at once -> (batch, tgt_len, attentional_size)."""
        out = self.rnn(embedded, initial=(state.hidden.h, state.hidden.c))
        return self._attend_and_combine(out.outputs, state)[0]

    def _feed_through(self, embedded: torch.Tensor, state: DecoderState, lengths: list[int] | None = None):
        """The input-feeding loop: -> (batch, tgt_len, attentional_size), or with `lengths` (rows
        longest first) the real positions only, (tokens, attentional_size) packed time-major.

        The first layer's embedding half is projected for a whole stage in one product; only the
        attentional half is left to each step. With lengths the loop runs in stages: when the rows
        still going fall below SHRINK_BELOW of the stage's rows, the finished ones are cut off
        (state, memory, keys); not at every step, as the backward of each cut fills a zero tensor
        of the whole memory.
        """
        first = self.rnn.cells[0].input_proj
        embed_weight, feed_weight = first.weight.split([embedded.size(-1), self.attentional_size], dim=1)
        h = list(state.hidden.h.unbind(0))  # per-layer lists: cheaper to step and to cut
        c = None if state.hidden.c is None else list(state.hidden.c.unbind(0))
        attentional = state.attentional
        assert attentional is not None  # input feeding starts from zeros (init_state)
        batch_size, tgt_len = embedded.shape[:2]
        running = None if lengths is None else rows_running(lengths)
        outputs = []
        for start, end, rows in [(0, tgt_len, batch_size)] if running is None else shrink_stages(running):
            if rows < attentional.size(0):
                h, attentional = [layer_h[:rows] for layer_h in h], attentional[:rows]
                c = None if c is None else [layer_c[:rows] for layer_c in c]
                keys = None if state.keys is None else state.keys[:rows]
                state = replace(state, memory=state.memory[:rows], keys=keys, src_mask=state.src_mask[:rows])
            # (rows, steps, blocks * hidden) for the stage's steps at once. unbind, not [:, t]: the
            # backward of a slice fills a zero tensor of the whole stage per step.
            stage = nn.functional.linear(embedded[:rows, start:end], embed_weight, first.bias).unbind(1)
            for t, projected in enumerate(stage, start):
                projected = projected + nn.functional.linear(attentional, feed_weight)
                attentional, h, c, _, _ = self._advance(projected, h, c, state)
                # Sliced only where rows ended: the backward of a slice fills a zero tensor.
                ended = running is not None and running[t] < rows
                outputs.append(attentional[: running[t]] if ended else attentional)
        if running is not None:
            return torch.cat(outputs)  # (tokens, attentional_size)
        return torch.stack(outputs, dim=1)  # (batch, tgt_len, attentional_size)

    # --- one step ------------------------------------------------------------------------------
    def step(
        self, prev_tokens: torch.Tensor, state: DecoderState, table: StepTable | None = None
    ) -> tuple[torch.Tensor, DecoderState]:
        """One decoding step for search: prev_tokens (rows,) -> log_probs (rows, vocab), state.
        With a `table` (made from these weights) the embedding half of the first layer's input is
        looked up instead of multiplied."""
        if table is not None:
            projected = table.first_input(prev_tokens, state.attentional)
        else:
            rnn_input = self.dropout(self.embed(prev_tokens))  # (rows, embed_dim)
            if self.input_feeding:
                rnn_input = torch.cat([rnn_input, state.attentional.to(rnn_input.dtype)], dim=-1)
            projected = self.rnn.cells[0].input_proj(rnn_input)  # (rows, blocks * hidden)
        h, c = state.hidden.h.unbind(0), None if state.hidden.c is None else state.hidden.c.unbind(0)
        attentional, h, c, weights, _ = self._advance(projected, h, c, state)
        hidden = RecurrentState(torch.stack(h), None if c is None else torch.stack(c))
        feed = attentional if self.input_feeding else None
        state = replace(state, hidden=hidden, attentional=feed, attention_weights=weights)
        logits = self.output(attentional)  # (rows, vocab)
        return torch.log_softmax(logits.float(), dim=-1), state

    def record_gates(self, tgt_in: torch.Tensor, state: DecoderState) -> list[Gates]:
        """Teacher-force tgt_in (batch, tgt_len) and return every layer's gates and states,
        (batch, tgt_len, hidden) each. Over a search's own output this replays exactly the states
        the search went through."""
        embedded = self._embed_targets(tgt_in)  # (batch, tgt_len, embed_dim)
        h, c = state.hidden.h.unbind(0), None if state.hidden.c is None else state.hidden.c.unbind(0)
        attentional, steps = state.attentional, []
        for t in range(tgt_in.size(1)):
            rnn_input = embedded[:, t] if not self.input_feeding else torch.cat([embedded[:, t], attentional], -1)
            projected = self.rnn.cells[0].input_proj(rnn_input)
            attentional, h, c, _, gates = self._advance(projected, h, c, state, record=True)
            steps.append(gates)
        layers = range(len(self.rnn.cells))
        return [
            {name: torch.stack([step[layer][name] for step in steps], dim=1) for name in steps[0][layer]}
            for layer in layers
        ]

    def _advance(self, projected: torch.Tensor, h, c, state: DecoderState, record: bool = False):
        """One step from the first layer's input projection (rows, blocks * hidden) and each
        layer's h and c (rows, hidden) -> the attentional vector (rows, attentional_size), the new
        h and c lists, the attention weights (rows, src_len) or None, and with `record` every
        layer's gates and states (else [])."""
        new_h, new_c, gates = [], [], []
        for layer, cell in enumerate(self.rnn.cells):
            if layer > 0:
                below = (
                    nn.functional.dropout(new_h[-1], self.rnn.dropout, self.training) if self.rnn.dropout else new_h[-1]
                )
                projected = cell.input_proj(below)
            h_t, c_t, cell_gates = cell.step(projected, h[layer], None if c is None else c[layer], record)
            new_h.append(h_t)
            new_c.append(c_t)
            if record:  # the states too: a cell without gates (rnn) still shows what it carries
                gates.append({**cell_gates, "hidden": h_t} | ({"cell": c_t} if c_t is not None else {}))
        attentional, weights = self._attend_and_combine(new_h[-1].unsqueeze(1), state)
        # squeeze, not [:, 0]: the backward of an index fills a zero tensor at every step.
        weights = None if weights is None else weights.squeeze(1)
        return attentional.squeeze(1), new_h, None if c is None else new_c, weights, gates

    def _attend_and_combine(self, rnn_output: torch.Tensor, state: DecoderState):
        """rnn_output (rows, steps, hidden) -> attentional vectors (rows, steps, attentional_size)
        and the attention weights (rows, steps, src_len), None without attention."""
        features, weights = rnn_output, None
        if self.attention is not None:
            context, weights = self._attend(rnn_output, state)
            features = torch.cat([rnn_output, context.to(rnn_output.dtype)], dim=-1)  # (rows, steps, hidden + memory)
        if self.combine is not None:
            combined = self.combine(features)  # fresh, so translation can overwrite it
            features = tanh_(combined) if no_grad_float32(combined) else torch.tanh(combined)
        return self.dropout(features), weights

    def _attend(self, rnn_output: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """rnn_output (rows, steps, hidden) -> context (rows, steps, memory_size) and weights
        (rows, steps, src_len). A sentence's beams query its memory together, as the
        beams * steps positions of one query."""
        assert self.attention is not None and state.keys is not None
        rows, steps = rnn_output.shape[:2]
        # By the memory's sentences, not by `beams`: an exported graph reads the beams from the shapes.
        query = rnn_output.reshape(state.memory.size(0), -1, rnn_output.size(-1))  # (sentences, beams * steps, hidden)
        context, weights = self.attention(query, state.keys, state.memory, state.src_mask)
        return context.reshape(rows, steps, -1), weights.reshape(rows, steps, -1)


@dataclass(frozen=True)
class StepTable:
    """Search's shortcut for the first layer's input projection, W_x [embed(y); attentional] + b:
    the embedding half of every target piece, projected once, so a step multiplies only the
    attentional half (a seventh of a beam step's products for the reference model). Made from the
    weights as they are (`of`), for searches over weights that do not change meanwhile: a
    Translator makes one per call."""

    embedded: torch.Tensor  # (vocab, blocks * hidden): W_e embed(y) + b for every piece y
    feed: nn.Linear | None  # attentional_size -> blocks * hidden, no bias; None without input feeding

    @classmethod
    @torch.no_grad()
    def of(cls, decoder: Decoder) -> StepTable | None:
        """The decoder's table, or None where it would not pay: int8 products (no float weight to
        split), or a table over TABLE_MAX_FLOATS (a large vocabulary costs more than it saves)."""
        first = decoder.rnn.cells[0].input_proj
        if not isinstance(first, nn.Linear) or decoder.embed.num_embeddings * first.out_features > TABLE_MAX_FLOATS:
            return None
        embed_weight, feed_weight = first.weight.split(
            [decoder.embed.embedding_dim, first.in_features - decoder.embed.embedding_dim], dim=1
        )
        embedded = nn.functional.linear(decoder.embed.weight, embed_weight, first.bias)
        feed = None
        if decoder.input_feeding:  # the attentional half, multiplied as the layer multiplies
            feed = type(first)(feed_weight.size(1), feed_weight.size(0), bias=False, device="meta")
            feed.weight = nn.Parameter(feed_weight.contiguous(), requires_grad=False)
        return cls(embedded, feed)

    def first_input(self, prev_tokens: torch.Tensor, attentional: torch.Tensor | None) -> torch.Tensor:
        """prev_tokens (rows,), attentional (rows, attentional_size) -> (rows, blocks * hidden)."""
        projected = self.embedded.index_select(0, prev_tokens)
        if self.feed is None:
            return projected
        return projected + self.feed(attentional)


def rows_running(lengths: list[int]) -> list[int]:
    """lengths (longest first) -> how many rows are still running at each step."""
    if any(later > earlier for earlier, later in itertools.pairwise(lengths)):
        raise ValueError("forward_packed needs the rows ordered longest target first")
    running, row = [], len(lengths)
    for t in range(lengths[0] if lengths else 0):
        while row and lengths[row - 1] <= t:
            row -= 1
        running.append(row)
    return running


def shrink_stages(running: list[int]) -> list[tuple[int, int, int]]:
    """-> (first step, end step, rows) per stage, cutting finished rows once they are many."""
    stages, start = [], 0
    for t in range(1, len(running) + 1):
        if t == len(running) or running[t] < SHRINK_BELOW * running[start]:
            stages.append((start, t, running[start]))
            start = t
    return stages
