"""The documentation: every relative link of README.md and docs/ resolves (file and anchor),
no link leaves the repository, and the generated model-zoo table matches the metafiles."""
import glob
import importlib.util
import os.path as osp
import re
import unicodedata

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PAGES = [osp.join(REPO, 'README.md')] + sorted(
    glob.glob(osp.join(REPO, 'docs', '**', '*.md'), recursive=True))
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
FENCE = re.compile(r'^(```|~~~)')


def _prose(text):
    """The lines outside fenced code blocks (links inside code are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def _strip_inline_code(line):
    return re.sub(r'`[^`]*`', '', line)


def github_anchor(heading):
    """The anchor GitHub gives a heading: the rendered text lowercased, punctuation other
    than '-' and '_' dropped, spaces turned into '-'."""
    text = re.sub(r'`([^`]*)`', r'\1', heading)  # inline code renders as its text
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)  # links render as their text
    text = re.sub(r'[*_]{1,2}([^*_]+)[*_]{1,2}', r'\1', text)
    text = text.strip().lower()
    kept = ''.join(ch for ch in text if ch in ' -_' or unicodedata.category(ch)[0] in 'LN')
    return kept.replace(' ', '-')


def anchors(path):
    """Every anchor of the headings of a Markdown file (duplicates numbered as GitHub does)."""
    with open(path, encoding='utf-8') as f:
        lines = _prose(f.read())
    seen, result = {}, set()
    for line in lines:
        match = re.match(r'^(#{1,6})\s+(.*?)\s*#*\s*$', line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        n = seen.get(anchor, 0)
        seen[anchor] = n + 1
        result.add(anchor if n == 0 else f'{anchor}-{n}')
    return result


def links(path):
    with open(path, encoding='utf-8') as f:
        lines = _prose(f.read())
    for number, line in enumerate(lines, 1):
        for match in LINK.finditer(_strip_inline_code(line)):
            yield number, match.group(1)


def test_pages_are_found():
    names = {osp.relpath(p, REPO) for p in PAGES}
    assert {'README.md', 'docs/en/get_started.md', 'docs/en/model_zoo.md'} <= names


@pytest.mark.parametrize('page', PAGES, ids=lambda p: osp.relpath(p, REPO))
def test_relative_links_resolve(page):
    problems = []
    for number, target in links(page):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition('#')
        dest = osp.normpath(osp.join(osp.dirname(page), file_part)) if file_part else page
        where = f'{osp.relpath(page, REPO)}:{number}: {target}'
        if not (dest == REPO or dest.startswith(REPO + osp.sep)):
            problems.append(f'{where} leaves the repository')
            continue
        if not osp.exists(dest):
            problems.append(f'{where}: no such file')
            continue
        if anchor and dest.endswith('.md') and anchor not in anchors(dest):
            problems.append(f'{where}: no heading with anchor #{anchor} in '
                            f'{osp.relpath(dest, REPO)}')
    assert not problems, '\n'.join(problems)


def test_anchor_rule_matches_github():
    # GitHub's rule (github-slugger) on headings of these docs.
    assert github_anchor('What `import mmdccnext` changes') == 'what-import-mmdccnext-changes'
    assert github_anchor('`make demo`') == 'make-demo'
    assert (github_anchor('Publishing weights (one command, then one metafile edit)') ==
            'publishing-weights-one-command-then-one-metafile-edit')
    assert github_anchor('Tables 3 and 4: sizes') == 'tables-3-and-4-sizes'


def test_link_checker_sees_broken_links(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('# Title\n\n[a](other.md) [b](#title) [c](#nothing)\n\n```\n[d](x.md)\n```\n')
    assert [t for _, t in links(str(page))] == ['other.md', '#title', '#nothing']
    assert anchors(str(page)) == {'title'}


def _model_zoo_tool():
    spec = importlib.util.spec_from_file_location(
        'update_model_zoo', osp.join(REPO, 'tools', 'docs', 'update_model_zoo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_zoo_page_is_generated_from_the_metafiles():
    tool = _model_zoo_tool()
    from mmdccnext.apis.zoo import load_model_index, model_zoo_markdown
    with open(tool.DOC, encoding='utf-8') as f:
        text = f.read()
    table = model_zoo_markdown(osp.join(REPO, 'model-index.yml'))
    assert tool.render(text, table) == text, \
        'docs/en/model_zoo.md is out of date: run python tools/docs/update_model_zoo.py'
    # one row per entry, each linking its config
    for name, entry in load_model_index(osp.join(REPO, 'model-index.yml')).items():
        assert f'[`{name}`](../../{entry["Config"]})' in text


def test_model_zoo_check_fails_on_a_stale_page():
    tool = _model_zoo_tool()
    stale = f'intro\n{tool.BEGIN}| old table |\n{tool.END}outro\n'
    fresh = tool.render(stale, '| new |\n')
    assert fresh == f'intro\n{tool.BEGIN}| new |\n{tool.END}outro\n'
    with pytest.raises(ValueError, match='expected one'):
        tool.render('no markers', '| new |\n')


# ------------------------------------------------------------------------------------------
# The code blocks: pytest-codeblocks runs them (setup.cfg, conftest.py); these tests keep the
# pages within what it runs and make a block that does not run say why.
# ------------------------------------------------------------------------------------------
RUNNABLE = ('python', 'bash', 'sh')
#: tags of fences that do not run (outputs, layouts, formulas, data)
NOT_RUN = ('text', 'yaml', 'bibtex', 'json', 'diff')
FENCE_OPEN = re.compile(r'^\s*(```+|~~~+)\s*(\S*)')


def fences(path):
    """``(line number, opening fence, language tag, code lines)`` of every fenced block."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE_OPEN.match(lines[i])
        if match:
            fence, tag = match.groups()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == fence)
            blocks.append((i + 1, fence, tag, lines[i + 1:end]))
            i = end
        i += 1
    return blocks


@pytest.mark.parametrize('page', PAGES, ids=lambda p: osp.relpath(p, REPO))
def test_every_fence_is_tagged_and_runnable_ones_are_what_the_runner_collects(page):
    from pytest_codeblocks import extract_from_file
    problems, expected = [], []
    for number, fence, tag, code in fences(page):
        where = f'{osp.relpath(page, REPO)}:{number}'
        if fence != '```':
            problems.append(f'{where}: fence {fence!r}: pytest-codeblocks reads only ```')
        elif tag in RUNNABLE:
            expected.append((number, '\n'.join(code)))
        elif tag not in NOT_RUN:
            problems.append(f'{where}: fence tagged {tag!r}: a command is ```bash, Python is '
                            f'```python, anything else that does not run is ```text')
        if tag in RUNNABLE:
            problems += [f'{where}: {line.strip()!r}: write `python`, as in an entered '
                         f'environment (README, Install)' for line in code
                         if '.venv/bin/python' in line.split('#')[0]]
    collected = [(b.lineno, b.code.rstrip('\n')) for b in extract_from_file(page)
                 if b.syntax in RUNNABLE]
    assert not problems, '\n'.join(problems)
    assert [n for n, _ in collected] == [n for n, _ in expected]


@pytest.mark.parametrize('page', PAGES, ids=lambda p: osp.relpath(p, REPO))
def test_a_block_that_does_not_run_says_why(page):
    from pytest_codeblocks import extract_from_file
    problems = []
    for block in extract_from_file(page):
        for mark in block.marks:
            mark = eval(mark, {'pytest': pytest, 'sys': __import__('sys')})
            if mark.name in ('skip', 'skipif', 'xfail') and not mark.kwargs.get('reason'):
                problems.append(f'{osp.relpath(page, REPO)}:{block.lineno}: '
                                f'pytest.mark.{mark.name} without reason="..."')
    assert not problems, '\n'.join(problems)


def test_make_test_runs_the_blocks_of_readme_and_every_docs_page(pytestconfig):
    assert pytestconfig.getoption('codeblocks'), 'setup.cfg addopts: --codeblocks'
    paths = pytestconfig.getini('testpaths')
    assert {'tests', 'README.md', 'docs/en'} <= set(paths), paths
    with open(osp.join(REPO, 'Makefile'), encoding='utf-8') as f:
        target = f.read().split('\ntest:')[1].split('\n\n')[0]
    # `make test` runs pytest without paths of its own, i.e. over testpaths
    assert re.search(r'\$\(PY\) -m pytest \$\(PYTEST_ARGS\)\s*$', target), target
