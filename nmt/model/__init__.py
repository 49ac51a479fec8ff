"""The network: cells from their equations (`cells`), stacks of them over time (`rnn`), the
encoder, the bridge, attention, the decoder and `seq2seq`, which builds one from a ModelConfig;
where it runs (`device`) and its int8 form (`quantize`). Knows nothing of training, search, files
or the command lines."""
