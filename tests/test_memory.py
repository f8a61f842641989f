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


def test_a_long_cell_is_followed_by_a_full_collection_and_a_quick_one_is_not(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_memory", lambda full=True: calls.append(full))
    times = iter([100.0, 100.1, 200.0, 203.0])
    monkeypatch.setattr("time.monotonic", lambda: next(times))
    memory._note_cell_start()
    memory._release_after_cell()    # 0.1 s cell
    memory._note_cell_start()
    memory._release_after_cell()    # 3 s cell
    assert calls == [False, True]
