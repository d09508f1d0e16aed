"""Learning: the only package that imports torch, transformers and peft.

Pure parts (no torch) live in ``aggregate`` (robust aggregation of merged LoRA
deltas, numpy only), ``timing`` (when to publish), ``pareto`` (tier choice) and
``data`` (corpora and non-IID shards).  ``models`` (tiers), ``train`` (LoRA
sessions, adapter files), ``continual``, ``distill``, ``tiny`` (test models)
and ``api`` (the node's interface) hold the torch work.  Importing this
package imports none of them; import the submodule you need.

Torch work is CPU-bound and blocking: callers on an event loop (the node) must
run it in a worker thread or process (``trio.to_thread.run_sync``), never on
the loop itself.
"""
