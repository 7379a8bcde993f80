"""Evaluation: the metrics (PSNR, SSIM, SWD, colour, checkerboard), a version's evaluation,
model selection's scores, the quality gate, and a run's first result against a known style."""
