"""The errors cnnzoo raises for bad input. Each message is one line that says what to do."""


class CnnzooError(Exception):
    """Base class: the command line prints these as one line, without a traceback."""

    # Under torchrun: raised alike by every process of the run (all of them stop together on a
    # NaN loss), so one process says it (`distributed.said_elsewhere`).
    every_rank: bool = False


class UnknownModelError(CnnzooError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelOptionError(CnnzooError, ValueError):
    """A model option (`--model-arg KEY=VALUE`, a `create_model` keyword) the model rejects."""


class InputSizeError(CnnzooError, ValueError):
    """An input a model cannot take: not an (N, C, H, W) batch, another channel count than its
    first conv reads, or smaller than its minimum size."""


class InputTypeError(InputSizeError, TypeError):
    """A batch of a kind a model cannot take (a numpy array, uint8, float64): a `TypeError` as
    well, as it was before it said what to pass instead."""


class WeightsError(CnnzooError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class NewerFormatError(WeightsError):
    """A checkpoint or bundle written by a newer cnnzoo, in a format this one does not read: no
    fallback (another way of reading it, a 'start again' hint) applies; upgrading does."""


class DamagedCheckpointError(WeightsError):
    """A `cnnzoo train` checkpoint whose description (its meta) is of the wrong kind: read as
    plain weights instead, it would lose its model, classes and input without a word."""


class ImageError(CnnzooError, ValueError):
    """A file that is not a readable image, or an array or tensor given as an image that cannot
    be one (its shape, its pixel type, a float image outside [0, 1])."""


class NotAnImageError(ImageError, TypeError):
    """An object given as an image that is none of the kinds cnnzoo reads (a list, bytes):
    a `TypeError` as well, as it was before it was a `CnnzooError`."""


class DataError(CnnzooError, ValueError):
    """A data set that cannot be used as given (no images, a single class, ...)."""


def no_validation_rows(source: object) -> DataError:
    """`evaluate --split val` of a held-out sheet, a manifest whose rows are all marked test
    (images or image/mask pairs): the error, in one wording for both tasks."""
    return DataError(f"{source} has no validation rows (none is marked val, and none trains "
                     "to draw them from): use --split test or --split all")


class TrainingError(CnnzooError, RuntimeError):
    """A training run that cannot go on (loss became NaN/inf, nothing to resume from)."""


class UsageError(CnnzooError, ValueError):
    """Command-line options that do not go together (argparse cannot say it on its own)."""


class ArgumentKindError(UsageError, TypeError):
    """A Python argument of the wrong kind (a model passed for its name, a number for a name
    pattern, None for a folder) or an unknown keyword (`transfer(data, epochs=3)`): a
    `TypeError` as well, as Python's own for these is and as it was before it was a
    `CnnzooError`."""


def pip_install_extra(*extras: str) -> str:
    """The command that installs cnnzoo's optional extras, quoted: unquoted, zsh (macOS's shell)
    refuses `pip install cnnzoo[data]` with 'no matches found' before pip runs."""
    return f"pip install 'cnnzoo[{','.join(extras)}]'"
