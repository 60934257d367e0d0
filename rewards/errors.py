"""The base class of errors in what a user gave us (a recipe, a dataset, a file), not in our code.

It lives here, in the lightest package, so that the ``rlhf`` command can catch every such error —
``rlhf.config.ConfigError``, ``rollouts.audio.AudioError``, ... — and print it as one line without
importing torch or transformers first.
"""


class UserError(ValueError):
    """Input that cannot be used; the message names the key, file or row and says what is wrong."""


class MissingExtraError(UserError):
    """An optional dependency is not installed; says which pip extra brings it."""

    def __init__(self, extra: str, err: ImportError):
        super().__init__(
            f"{err.name or err} is not installed; pip install 'speech-rlhf[{extra}]' brings it"
        )
