#!/usr/bin/env python3
"""README quotes files of the tree: a line `<!-- quote: PATH -->` followed by a fenced code
block must show PATH exactly, so the code README shows is the code the tests compile and run.
usage: check-readme.py SOURCE_DIR"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
readme = (root / 'README.md').read_text()
quotes = re.findall(r'<!-- quote: (\S+) -->\n```[a-z]*\n(.*?)```\n', readme, re.S)
if not quotes:
    sys.exit('README.md quotes no file (expected <!-- quote: PATH --> before a code block)')
bad = 0
for path, block in quotes:
    text = (root / path).read_text()
    if block != text:
        print(f'README.md shows {path} differently from the file')
        bad += 1
    else:
        print(f'README.md shows {path} as it is')
sys.exit(1 if bad else 0)
