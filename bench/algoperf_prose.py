#!/usr/bin/env python3
"""English prose from what a Python installation ships, for the algoperf
`prose` workload on a machine without internet: every docstring (modules,
classes, functions; parsed with `ast`, never imported) and every text file
(*.md, *.rst, *.txt, README*) of the standard library and of the
`transformers` package (the roots of the `code` workload's corpus), plus the
long descriptions in every site-packages *.dist-info/METADATA (package
READMEs). Exact duplicates (license texts, vendored copies) are dropped;
fragments under MIN_CHARS characters are skipped. Files are read in parallel
(one process per core); the output order is the sorted file order.
Writes one JSON object per line ({"text": ...}) for `ferrotron prepare`.

usage: algoperf_prose.py OUT.jsonl [ROOT ...]
"""
import ast, hashlib, json, multiprocessing, os, sys, sysconfig, site

MIN_CHARS = 200
TEXT_EXT = (".md", ".rst", ".txt")


def roots():
    out = [sysconfig.get_paths()["stdlib"]]
    try:
        import importlib.util
        spec = importlib.util.find_spec("transformers")
        if spec and spec.submodule_search_locations:
            out += list(spec.submodule_search_locations)
    except Exception:
        pass
    return [os.path.realpath(p) for p in out if os.path.isdir(p)]


def metadata_files():
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs |= set(site.getsitepackages()) if hasattr(site, "getsitepackages") else set()
    out = []
    for d in sorted(os.path.realpath(x) for x in dirs if os.path.isdir(x)):
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name, "METADATA")
            if name.endswith(".dist-info") and os.path.isfile(p):
                out.append(p)
    return sorted(set(out))


def docstrings(source):
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            d = ast.get_docstring(node, clean=True)
            if d:
                yield d


def metadata_body(text):
    # RFC 822 headers, a blank line, then the long description.
    head, sep, body = text.partition("\n\n")
    return body if sep else ""


def texts_of(path):
    """(kind, text) pieces of one file."""
    name = os.path.basename(path)
    try:
        if name.endswith(".py"):
            with open(path, encoding="utf-8") as f:
                return [("docstring", d) for d in docstrings(f.read())]
        if name == "METADATA":
            with open(path, encoding="utf-8") as f:
                return [("metadata", metadata_body(f.read()))]
        if os.path.getsize(path) < 2_000_000:
            with open(path, encoding="utf-8") as f:
                return [("text file", f.read())]
    except (UnicodeDecodeError, OSError):
        pass
    return []


def files(scan):
    for root in scan:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py") or name.lower().endswith(TEXT_EXT) or name.upper().startswith("README"):
                    yield os.path.join(dirpath, name)


def main():
    out_path = sys.argv[1]
    scan = sys.argv[2:] or roots()
    paths = list(files(scan)) + (metadata_files() if len(sys.argv) == 2 else [])
    seen, n_docs, n_chars = set(), 0, 0
    counts = {"docstring": 0, "text file": 0, "metadata": 0}
    with open(out_path, "w", encoding="utf-8") as out, multiprocessing.Pool() as pool:
        for pieces in pool.imap(texts_of, paths, chunksize=64):
            for kind, text in pieces:
                text = text.strip()
                if len(text) < MIN_CHARS:
                    continue
                h = hashlib.sha1(text.encode("utf-8", "replace")).digest()
                if h in seen:
                    continue
                seen.add(h)
                out.write(json.dumps({"text": text}) + "\n")
                n_docs += 1
                n_chars += len(text)
                counts[kind] += 1
    print(f"prose: {n_docs} documents, {n_chars / 1e6:.1f}M characters from {len(paths)} files under {', '.join(scan)}; "
          + ", ".join(f"{v} {k}s" for k, v in counts.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
