"""Evaluation: metrics (PSNR/SSIM with stated conventions), classical baselines, face recognition,
reports, and the evaluate / restore / export / ablation commands.

Submodules are imported where used (``from nasfe.evaluate.metrics import psnr``) so that importing
the package stays cheap: matplotlib, OpenCV and onnxruntime load only when a command needs them.
"""
