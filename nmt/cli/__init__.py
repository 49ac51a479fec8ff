"""The command lines: thin layers over the library (argparse and Hydra edges).

`nmt-train` (`train`), `nmt-translate` (`translate`), `nmt-evaluate` (`evaluate`) and
`nmt-inspect` (`inspect`); `options` builds their shared flags from the config dataclasses.
"""
