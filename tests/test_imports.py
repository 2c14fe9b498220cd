import subprocess
import sys


def test_core_import_stays_light():
    code = ("import sys, memret; heavy = [m for m in ('torch', 'timm', 'transformers', 'pyserini', 'avalanche') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing memret pulled in {out}"


def test_missing_faiss_names_the_extras():
    # faiss-cpu / faiss-gpu are extras (they install the same module): without either, say which to install.
    code = "import sys; sys.modules['faiss'] = None\ntry:\n import memret\nexcept ImportError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "memret[cpu]" in out and "memret[gpu]" in out
