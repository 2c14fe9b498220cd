import subprocess
import sys


def test_core_import_stays_light():
    code = ("import sys, memret; heavy = [m for m in ('torch', 'timm', 'transformers', 'pyserini', 'avalanche') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing memret pulled in {out}"
