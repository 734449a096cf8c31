"""``python -m tunepipe``: the ``pipeline`` command.

Ctrl-C and SIGTERM are taken over before the CLI (click, the core) is imported, so that a signal
at any moment of start-up ends the command as one a moment later does (exit 130 and one line, as
``cli._stop_now``), not with a traceback or killed by the signal. :func:`main` is also fit to be
the console scripts' entry point, for the same reason: importing this module does nothing else.
"""

import os
import signal


def _stopped(_signum: int, _frame: object) -> None:
    os.write(2, b"interrupted\n")
    os._exit(130)


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # ignored from the start (a background job): stays so
            signal.signal(sig, _stopped)
    from tunepipe.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
