"""DCMTK's spellings on the minipacs command line (issue 12 item 20).

People come with ``storescu +sd +r``, ``movescu -od DIR +P 11113``, ``findscu -W`` and ``-v``
after the tool's name. Before argparse reads the arguments, :func:`translate` rewrites the
spellings that mean the same in minipacs (:data:`SAME`), moves ``-v``/``-d`` given after the
command to the front (they are global), and refuses the DCMTK options minipacs has no equivalent
for with the minipacs way to do it (:data:`ANSWERS`, and any other ``+option``), instead of
argparse's "invalid int value: '+r'".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

#: The commands that talk to a DICOM node like a DCMTK tool (and take these spellings).
SCU_COMMANDS: Final = ("echo", "store", "find", "move", "get", "worklist")
#: Global flags that DCMTK users give after the tool's name.
GLOBAL_FLAGS: Final = frozenset({"-v", "--verbose", "-d", "--debug"})
#: Options whose next argument is a value, never a DCMTK option (e.g. ``-k +x``).
_TAKES_VALUE: Final = frozenset({"-k", "--key", "--password", "-pwd", "--user", "-usr", "-aet", "-aec", "-aem"})

_TRANSFER_SYNTAX: Final = (
    "minipacs chooses transfer syntaxes itself (store: each file's own, plus Explicit and "
    "Implicit VR Little Endian to transcode to; find/move/get: Explicit, then Implicit VR "
    "Little Endian); there is no option for it"
)

_ANY: Final = "*"

#: (command or "*", DCMTK option) -> the minipacs arguments meaning the same (empty: minipacs always does it).
SAME: Final[Mapping[tuple[str, str], tuple[str, ...]]] = {
    ("store", "+sd"): (),
    ("store", "--scan-directories"): (),  # folders are always scanned
    ("store", "+r"): (),
    ("store", "--recurse"): (),  # ... recursively
    ("store", "-nh"): (),
    ("store", "--no-halt"): (),  # a failed file never stops the others
    ("store", "+f"): (),
    ("store", "--read-file"): (),
    ("get", "-od"): ("--out",),
    ("get", "--output-directory"): ("--out",),
    ("move", "-od"): ("--store-to",),
    ("move", "--output-directory"): ("--store-to",),
    ("move", "+P"): ("--port",),
    ("move", "--move"): ("-aem",),
    (_ANY, "--call"): ("-aec",),
    (_ANY, "--aetitle"): ("-aet",),
    (_ANY, "-usr"): ("--user",),
    (_ANY, "-pwd"): ("--password",),
    (_ANY, "-rsp"): ("--pos-response",),
    (_ANY, "-epw"): ("--password", ""),
    (_ANY, "--empty-password"): ("--password", ""),
}

#: (command or "*", DCMTK option) -> what to do in minipacs instead.
ANSWERS: Final[Mapping[tuple[str, str], str]] = {
    ("find", "-W"): "findscu -W (Modality Worklist) is `minipacs worklist query HOST PORT -k KEY=VALUE ...`",
    ("find", "--worklist"): "findscu --worklist is `minipacs worklist query HOST PORT -k KEY=VALUE ...`",
    ("find", "-X"): "minipacs find prints the matches; --json gives them as PS3.18 JSON (redirect it to a file)",
    ("find", "--extract"): "minipacs find prints the matches; --json gives them as PS3.18 JSON",
    ("find", "-od"): "minipacs find writes no files; --json prints the matches as PS3.18 JSON",
    ("store", "+sp"): "minipacs store has no scan pattern: it sends every DICOM file under the folders "
    "(the others are listed as skipped); name the files to send only some",
    ("store", "--scan-pattern"): "minipacs store has no scan pattern: name the files to send only some",
    ("store", "-r"): "minipacs store always recurses into folders",
    (_ANY, "+tls"): "DICOM TLS is --tls --tls-ca PEM [--tls-cert PEM --tls-key PEM]",
    (_ANY, "--enable-tls"): "DICOM TLS is --tls --tls-ca PEM [--tls-cert PEM --tls-key PEM]",
    (_ANY, "-q"): "minipacs prints only warnings and errors unless given -v (info) or -d (debug)",
    (_ANY, "--quiet"): "minipacs prints only warnings and errors unless given -v (info) or -d (debug)",
    (_ANY, "-ll"): "the log level is -v (info) or -d (debug)",
    (_ANY, "--log-level"): "the log level is -v (info) or -d (debug)",
    (_ANY, "-R"): _TRANSFER_SYNTAX,
    (_ANY, "--required"): _TRANSFER_SYNTAX,
    (_ANY, "+C"): _TRANSFER_SYNTAX,
    **{(_ANY, f"-x{c}"): _TRANSFER_SYNTAX for c in "=ebisyxvwtumhnl23o45rd"},
    **{(_ANY, f"+x{c}"): _TRANSFER_SYNTAX for c in "=ebisyxvwtumhnl23o45rda"},
}

_OPTION_LIKE: Final = re.compile(r"^\+[A-Za-z=][A-Za-z0-9=-]*$")


class DcmtkSpelling(ValueError):
    """A DCMTK option minipacs has no equivalent for; the text says what to use instead."""


def _command(argv: Sequence[str]) -> int | None:
    """Index of the command in ``argv`` (the first word that is not a global flag)."""
    for i, word in enumerate(argv):
        if not word.startswith("-"):
            return i
    return None


def translate(argv: Sequence[str]) -> list[str]:
    """``argv`` with DCMTK spellings made minipacs ones; raises DcmtkSpelling for those it cannot take."""
    at = _command(argv)
    if at is None or argv[at] not in SCU_COMMANDS:
        return list(argv)
    command = argv[at]
    if command == "worklist" and argv[at + 1 : at + 2] != ["query"]:  # only `worklist query` is a DCMTK-like SCU
        return list(argv)
    front, rest = list(argv[:at]), list(argv[at + 1 :])
    out: list[str] = []
    previous = ""
    for word in rest:
        if previous in _TAKES_VALUE:
            out.append(word)
        elif word in GLOBAL_FLAGS:
            front.append(word)
        elif (command, word) in SAME or (_ANY, word) in SAME:
            out.extend(SAME.get((command, word), SAME.get((_ANY, word), ())))
        elif (command, word) in ANSWERS or (_ANY, word) in ANSWERS:
            answer = ANSWERS.get((command, word)) or ANSWERS[(_ANY, word)]
            raise DcmtkSpelling(f"{word} is a DCMTK option; {answer}")
        elif _OPTION_LIKE.match(word):
            raise DcmtkSpelling(
                f"{word} is a DCMTK option minipacs {command} does not take; "
                f"see `minipacs {command} --help` for what it does take"
            )
        else:
            out.append(word)
        previous = word
    return [*front, command, *out]


__all__ = ["ANSWERS", "SAME", "DcmtkSpelling", "translate"]
