from edgelab import memory


def test_release_after_every_cell_registers_once_in_ipython_and_is_a_no_op_elsewhere():
    from IPython.core.interactiveshell import InteractiveShell

    memory.release_after_every_cell()  # plain Python: nothing to hook, no error
    shell = InteractiveShell.instance()
    try:
        memory.release_after_every_cell()
        memory.release_after_every_cell()
        hooks = [h for h in shell.events.callbacks["post_run_cell"]
                 if h.__name__ == "_release_after_cell"]
        assert len(hooks) == 1
        shell.run_cell("x = 1")  # the hook runs after a cell without error
    finally:
        InteractiveShell.clear_instance()


def test_importing_edgelab_registers_no_hook_until_setup_notebook(monkeypatch):
    import subprocess
    import sys
    code = ("import IPython.core.interactiveshell as s; shell = s.InteractiveShell.instance(); "
            "import edgelab.measure, edgelab.memory, edgelab.quantize, edgelab.widgets, edgelab.deploy; "
            "n = lambda: len(shell.events.callbacks['post_run_cell']); before = n(); "
            "edgelab.memory.setup_notebook(); print(before, n())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "1"]
