"""Ray at the edge: Train workers running the engine (``ray_train``), the ``search``/``retrain``
jobs, cluster connection and run storage (``cluster``). The engine never imports this package."""
