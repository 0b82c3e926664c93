SOURCE_SHA256: str
EV_STOP: int
EV_END: int
EV_ERROR: int
EV_HEAD: int
EV_OTHER: int
EV_PYTHON: int

def walk(data: bytes, pos: int, n: int, state: int, rows: int, left: int, deprecate_eof: bool,
         cursor: bool, keep_head: bool, /) -> tuple[int, int, int, int, int, int, int]: ...
