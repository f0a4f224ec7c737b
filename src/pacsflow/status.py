"""Exit statuses of every pacsflow command (light: the command line reads them before anything heavy)."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
