"""An S3 server for tests: moto's standalone server on 127.0.0.1, a port the OS picks, in a
process of its own (so moto's settings, read from its environment, stay its own).

`MotoS3.start(auth=True)` makes it check credentials (moto's INITIAL_NO_AUTH_ACTION_COUNT):
its first requests make an IAM user with a key allowed everything, the rest must be signed
with that key. Used by the unit tests and the integration suite alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

SERVER = """
import sys
from moto.server import ThreadedMotoServer
s = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
s.start()
print(s.get_host_and_port()[1], flush=True)
sys.stdin.read()
s.stop()
"""

ANY = "testing"  # moto without auth takes any key


@dataclass
class MotoS3:
    proc: subprocess.Popen
    port: int
    access_key_id: str = ANY
    secret_access_key: str = ANY

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, *, auth: bool = False) -> MotoS3:
        env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"  # the three IAM calls below
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            proc.kill()
            raise RuntimeError(f"moto's server did not start: {line!r}")
        server = cls(proc, int(line))
        if auth:
            iam = server.boto("iam")
            iam.create_user(UserName="lbsolo")
            key = iam.create_access_key(UserName="lbsolo")["AccessKey"]
            policy = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
            iam.put_user_policy(UserName="lbsolo", PolicyName="all", PolicyDocument=policy)
            server.access_key_id, server.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        return server

    def boto(self, service: str = "s3"):
        import boto3

        return boto3.client(
            service, endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
        )  # fmt: skip

    def make_bucket(self, name: str) -> None:
        self.boto().create_bucket(Bucket=name)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
