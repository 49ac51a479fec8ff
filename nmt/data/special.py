"""The ids every vocabulary reserves, whatever its tokenizer: padding, unknown, begin and end of
sentence. The model and search need only these, and importing them loads nothing."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
