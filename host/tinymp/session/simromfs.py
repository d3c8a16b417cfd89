"""A stand-in for `vfs.rom_ioctl` of MicroPython's stm32 port writing ROMFS in the STM32H7's
internal flash: what the agent's ROMFS commit talks to on the simulated board and in the tests.

Written from MicroPython v1.28's ports/stm32/vfs_rom_ioctl.c and flash.c (flash_erase,
flash_write for the H7), not from hardware; what it models:

  rom_ioctl(1)                    -> the number of segments (one here)
  rom_ioctl(2, id)                -> a memoryview of the segment (the memory-mapped flash)
  rom_ioctl(3, id, n)             -> erases every sector holding bytes [0, n) to 0xFF, from the
                                     first up; returns 16, what the port returns for internal
                                     flash (although the H7 programs 32-byte flash words)
  rom_ioctl(4, id, offset, buf)   -> programs len(buf) // 4 words at `offset` (the port drops
                                     the bytes of a last partial word); `offset` must be 32-byte
                                     aligned (else the HAL fails: -EIO); a last partial flash
                                     word is programmed padded with 0xFF; returns 0
  rom_ioctl(5, id)                -> -EINVAL: the stm32 port has no WRITE_COMPLETE
  an unknown id, a missing argument, a range past the segment -> -EINVAL

Stricter than the hardware in one way: programming a flash word that is not erased (not all
0xFF) fails with -EIO, where the H7 may program it and corrupt its ECC. `writable=False` gives a
port whose segment can be read but not written (WRITE_PREPARE and WRITE answer -EINVAL, as on
rp2, mimxrt and most others).

Faults for tests: `crash = (op, n, how)` resets the "board" on the n-th call (1-based) of
rom_ioctl op 3, 4 or 5: `how` "before" (nothing done), "torn" (an erase clears only the first
sector, a write programs only its first half, rounded down to flash words) or "after" (done).
The reset is `on_crash()`: raising BoardReset by default (a BaseException, which the agent does
not catch), killing the process on the simulated board.

This file runs under MicroPython too (the tests hand it to the agent on the unix port), so it
uses no CPython-only module; the simulated board passes a memory-mapped file as `mem`, so the
"flash" outlives the process as a board's flash outlives a reset.
"""

EINVAL = 22
EIO = 5


class BoardReset(BaseException):
    """The simulated board was reset in the middle of a flash operation."""


class Stm32Romfs:
    SECTOR = 128 * 1024   # STM32H7 flash sector
    FLASH_WORD = 32       # STM32H7 flash word: the unit of programming
    GRANULARITY = 16      # what the stm32 port's WRITE_PREPARE returns for internal flash

    def __init__(self, mem, sector=None, writable=True, crash=None, on_crash=None):
        self.mem = memoryview(mem)
        self.size = len(self.mem)
        self.sector = sector or self.SECTOR
        self.writable = writable
        self.crash = crash
        self.on_crash = on_crash
        self.calls = {3: 0, 4: 0, 5: 0}
        self.log = []  # (op, offset, length) of what changed the flash, in order

    def _fault(self, op):
        """"before", "torn", "after" or None for this call of op."""
        self.calls[op] += 1
        c = self.crash
        if c is not None and c[0] == op and c[1] == self.calls[op]:
            return c[2]
        return None

    def _reset(self):
        if self.on_crash is not None:
            self.on_crash()
        raise BoardReset("simulated reset at rom_ioctl(%d) call %d" % (self.crash[0],
                                                                       self.crash[1]))

    def rom_ioctl(self, cmd, *args):
        if cmd == 1:
            return 1
        if len(args) < 1 or args[0] != 0:
            return -EINVAL
        if cmd == 2:
            return self.mem
        if cmd == 3:
            if len(args) < 2 or not self.writable:
                return -EINVAL
            return self._prepare(args[1])
        if cmd == 4:
            if len(args) < 3 or not self.writable:
                return -EINVAL
            return self._write(args[1], args[2])
        if cmd == 5:
            if self._fault(5) is not None:
                self._reset()
            return -EINVAL
        return -EINVAL

    def _prepare(self, n):
        if n < 0 or n > self.size:
            return -EINVAL
        how = self._fault(3)
        if how == "before":
            self._reset()
        dest = 0
        while dest < n:
            end = min(dest + self.sector, self.size)
            self.mem[dest:end] = b"\xff" * (end - dest)
            self.log.append((3, dest, end - dest))
            dest = end
            if how == "torn":
                self._reset()
        if how == "after":
            self._reset()
        return self.GRANULARITY

    def _write(self, offset, buf):
        data = memoryview(buf)
        n = len(data)
        if offset < 0 or offset + n > self.size:
            return -EINVAL
        how = self._fault(4)
        if how == "before":
            self._reset()
        if offset % self.FLASH_WORD:
            return -EIO  # the HAL refuses a misaligned flash word: HAL_ERROR
        n = n // 4 * 4  # the port writes len // 4 words
        fw = self.FLASH_WORD
        words = (n + fw - 1) // fw
        if how == "torn":
            words //= 2
        for k in range(words):
            a = offset + k * fw
            piece = bytes(data[k * fw:min(n, (k + 1) * fw)])
            if bytes(self.mem[a:a + fw]) != b"\xff" * fw:
                return -EIO  # programming a word that is not erased
            self.mem[a:a + fw] = piece + b"\xff" * (fw - len(piece))
        self.log.append((4, offset, words * fw))
        if how is not None:
            self._reset()
        return 0
