"""Exit codes of every `minipacs` command, the same for all of them."""

EXIT_OK = 0  # everything succeeded
EXIT_PARTIAL = 1  # some files failed, were skipped or got a warning status
EXIT_USAGE = 2  # usage or configuration error
EXIT_NETWORK = 3  # no association: refused, timed out, rejected or aborted
