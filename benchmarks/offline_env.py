"""Make a scratch virtual environment that sees this Python's packages (torch above all), with no network.

    python benchmarks/offline_env.py DIR

Run it with the Python whose packages the environment should see (a GPU node's own, with its
CUDA build of PyTorch). ``DIR`` becomes a virtual environment without pip of its own; a ``.pth``
file in its site-packages lists this Python's site-packages folders, so torch, NumPy, pip and
setuptools are found there. Installing course_lib into ``DIR`` then changes nothing in this
Python's own environment: ``make gpu-check`` installs into such a scratch environment exactly as
``make gpu-env`` installs into the node's, with ``pip install --no-deps --no-build-isolation
--no-index``, and so checks the offline install without touching anything.

Only the folders are listed, not the ``.pth`` files inside them, so editable installs made in
this Python's environment (a course_lib from another checkout, say) stay invisible in ``DIR``.
"""

from __future__ import annotations

import argparse
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path


def site_folders() -> list[str]:
    """This Python's site-packages folders (the environment's own, then the user's), existing ones only."""
    folders = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    seen: list[str] = []
    for folder in folders:
        if folder not in seen and Path(folder).is_dir():
            seen.append(folder)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="the environment to create (replaced if it exists)")
    args = parser.parse_args(argv)
    target = Path(args.dir).resolve()
    if target.exists():
        if not (target / "pyvenv.cfg").exists():
            parser.error(f"{target} exists and is not a virtual environment: refusing to replace it")
        shutil.rmtree(target)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    python = target / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    folders = site_folders()
    (Path(purelib) / "_outer_environment.pth").write_text("".join(f"{f}\n" for f in folders))
    check = subprocess.run([str(python), "-c", "import torch, pip, setuptools; print(torch.__version__)"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        print(f"{target} cannot import torch, pip and setuptools from {folders}:\n{check.stderr.strip()}",
              file=sys.stderr)
        return 1
    print(f"{target}: a virtual environment over {sys.executable}'s packages (torch {check.stdout.strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
