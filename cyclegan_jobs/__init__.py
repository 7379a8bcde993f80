"""cyclegan_jobs: train and run a CycleGAN as batch jobs (model, data, storage, jobs, CLI)."""

__version__ = "0.1.0"
