"""The cluster's one failure a caller must handle, apart from the modules that raise it (so the
layers above can catch it without importing the Redis client)."""


class DirectoryUnavailable(Exception):
    """Redis could not answer in time (down, unreachable, hung, refusing us), or the directory
    is not running. The one exception a caller of `NodeDirectory` has to handle."""
