"""A training run's files written as one set: the old set or the new one, never a mix.

    with ModelSet(out_dir, FILES) as staged:     # checks out_dir now, before any work
        model.save(staged.path("mnist_cnn.keras"))
        ...
        staged.commit()                          # all files replace the old ones together

Files are written into a hidden staging folder inside out_dir (the same file system, so
moving them is a rename). commit() writes a journal naming that folder, then renames the
files into place and removes the journal. A run killed before the journal exists leaves the
old set untouched; one killed after it is completed by whoever next opens the folder
(complete_interrupted(), which the next training run and the model loader call), so
readers only ever see a whole set. A lock on out_dir keeps two runs from writing into one
folder at once. Nothing left behind is an image file in out_dir: only hidden names.
"""

import os
import shutil
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs into one folder at once are not guarded
    fcntl = None

STAGING_PREFIX = ".staging-"
JOURNAL = ".commit-in-progress"


class OutputError(OSError):
    """The output folder cannot hold a model set (a file, not writable, locked by another run)."""


class ModelSet:
    """The staging of one set of output files in `out_dir`."""

    def __init__(self, out_dir, names):
        self.out_dir = Path(out_dir)
        self.names = tuple(names)
        self.lock = None
        self.staging = None

    def __enter__(self):
        self.out_dir = prepare_folder(self.out_dir, self.names)
        self.lock = lock_folder(self.out_dir, wait=False)
        if self.lock is None:
            raise OutputError(f"{self.out_dir}: another training run is writing into this folder")
        try:
            complete_interrupted(self.out_dir, locked=True)
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out_dir))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def path(self, name):
        """Where to write output file `name` (one of the set's names) before commit()."""
        assert name in self.names, name
        return str(self.staging / name)

    def commit(self):
        """Move every file of the set into out_dir together."""
        missing = [name for name in self.names if not (self.staging / name).is_file()]
        if missing:
            raise OutputError(f"{self.staging}: the set lacks {', '.join(missing)}")
        for name in self.names:
            fsync_path(self.staging / name)
        fsync_path(self.staging)
        journal = self.staging / JOURNAL
        journal.write_text(self.staging.name + "\n")
        fsync_path(journal)
        os.replace(journal, self.out_dir / JOURNAL)  # the commit point
        fsync_path(self.out_dir)
        roll_forward(self.out_dir)

    def __exit__(self, *exc):
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)  # nothing of an uncommitted run stays
        if self.lock is not None:
            os.close(self.lock)
        return False


def prepare_folder(out_dir, names):
    """Create out_dir if needed and check that the set can be written into it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: not a folder (the output folder must be one)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{out_dir}: cannot create the output folder ({error.strerror or error})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir}: cannot write into the output folder (permission denied)")
    for name in names:
        target = out_dir / name
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise OutputError(f"{target}: in the way of an output file (not a regular file)")
    return out_dir


def lock_folder(folder, wait):
    """An exclusive lock on `folder` (a file descriptor), or None when another process holds it."""
    fd = os.open(folder, os.O_RDONLY)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


def complete_interrupted(folder, locked=False):
    """Finish a commit that a killed run left half done, and remove abandoned staging folders.

    Safe to call on any folder, at any time: without the lock (another run is writing),
    it does nothing; in a folder that cannot be written, it does nothing.
    """
    folder = Path(folder)
    if not locked:
        if not any(entry.name.startswith((STAGING_PREFIX, JOURNAL)) for entry in scan(folder)):
            return  # the usual case: nothing to do, and no lock taken
        try:
            lock = lock_folder(folder, wait=False)
        except OSError:
            return
        if lock is None:
            return
        try:
            return complete_interrupted(folder, locked=True)
        finally:
            os.close(lock)
    try:
        if (folder / JOURNAL).exists():
            roll_forward(folder)
        for entry in scan(folder):
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
    except OSError:
        pass  # a read-only folder: readers still see the set the journal names, once it can be written


def roll_forward(folder):
    """Move the journal's staged files into `folder`, then remove the journal and the staging folder."""
    journal = folder / JOURNAL
    staging = folder / journal.read_text().strip()
    if staging.parent != folder or not staging.name.startswith(STAGING_PREFIX):
        journal.unlink()  # not ours: a journal always names a staging folder beside it
        return
    if staging.is_dir():
        for entry in scan(staging):
            os.replace(entry.path, folder / entry.name)
    fsync_path(folder)
    journal.unlink()
    shutil.rmtree(staging, ignore_errors=True)


def scan(folder):
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


def fsync_path(path):
    """Flush a file or folder to disk, so a crash cannot reorder the rename before the data."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
