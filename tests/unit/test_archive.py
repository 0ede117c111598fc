"""The archive's own ustar headers are byte for byte tarfile's."""

from __future__ import annotations

import tarfile

from hypothesis import given
from hypothesis import strategies as st

from backstop.workers.archive import USTAR_ID_LIMIT, USTAR_NUMBER_LIMIT, ustar_header


@given(name=st.text(min_size=1, max_size=120), mode=st.integers(0, 0o7777),
       uid=st.integers(0, 2 * USTAR_ID_LIMIT), gid=st.integers(0, USTAR_ID_LIMIT - 1),
       size=st.integers(0, 2 * USTAR_NUMBER_LIMIT), mtime=st.integers(0, USTAR_NUMBER_LIMIT))
def test_a_ustar_header_is_tarfiles_or_left_to_it(name: str, mode: int, uid: int, gid: int,
                                                   size: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, uid, gid, size, mtime
    made = ustar_header(info)
    if made is None:  # tarfile makes it, with a PAX header: a long or non-ASCII name, ...
        assert not (name.isascii() and len(name) <= 100 and uid < USTAR_ID_LIMIT
                    and size < USTAR_NUMBER_LIMIT and mtime < USTAR_NUMBER_LIMIT)
    else:
        assert made == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
