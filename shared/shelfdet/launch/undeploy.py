"""``make undeploy``: delete the endpoint, endpoint config and model that ``make deploy`` created."""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Dict, List, Optional

from . import aws, deploy
from .aws import LaunchError, note


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet undeploy", description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", help="endpoint name (default: the newest one deploy recorded for REGION)")
    p.add_argument("--record-dir", default=deploy.RECORD_DIR)
    p.add_argument("--force", action="store_true", help="also delete an endpoint deploy did not create")
    aws.add_common(p, stack=False)
    return p


def newest_record(record_dir: str, region: str) -> Optional[Dict[str, Any]]:
    records = []
    for path in glob.glob(os.path.join(record_dir, "*.json")):
        with open(path) as f:
            record = json.load(f)
        if record.get("region") == region:
            records.append((os.path.getmtime(path), record))
    return max(records, key=lambda r: r[0])[1] if records else None


def read_record(record_dir: str, endpoint: str) -> Optional[Dict[str, Any]]:
    path = deploy.record_path(record_dir, endpoint)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def from_aws(cloud: aws.Aws, endpoint: str, force: bool) -> Dict[str, Any]:
    """What deploy created, read back from the endpoint (for when the record is gone)."""
    sm = cloud.client("sagemaker")
    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
    except sm.exceptions.ClientError:
        raise LaunchError("no endpoint {} in {}".format(endpoint, cloud.region)) from None
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=desc["EndpointArn"]).get("Tags", [])}
    if tags.get(deploy.TAG) != endpoint and not force:
        raise LaunchError("endpoint {} was not created by `make deploy` (no {} tag): pass --force to delete it anyway".format(
            endpoint, deploy.TAG))
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    models = [v["ModelName"] for v in config.get("ProductionVariants", [])]
    return {"endpoint": endpoint, "endpoint_config": desc["EndpointConfigName"], "model": models}


def plan(args: argparse.Namespace, cloud: aws.Aws) -> Dict[str, Any]:
    if args.endpoint:
        record = read_record(args.record_dir, args.endpoint)
    else:
        record = newest_record(args.record_dir, args.region)
        if record is None:
            raise LaunchError("no ENDPOINT given and no deployment recorded in {} for {}: pass ENDPOINT=<name>".format(
                args.record_dir, args.region))
    if record is not None:
        return record
    if cloud.dry_run:
        return {"endpoint": args.endpoint, "endpoint_config": "<config of endpoint {}>".format(args.endpoint),
                "model": ["<model of endpoint {}>".format(args.endpoint)]}
    return from_aws(cloud, args.endpoint, args.force)


def delete(cloud: aws.Aws, operation: str, request: Dict[str, str]) -> None:
    try:
        cloud.send("sagemaker", operation, request)
    except cloud.client("sagemaker").exceptions.ClientError as err:
        # Gone already (an earlier undeploy, the console): the goal is reached.
        if "could not find" not in str(err).lower() and "does not exist" not in str(err).lower():
            raise
        note("{} already gone".format(list(request.values())[0]))


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    cloud = aws.Aws.from_args(args)
    record = plan(args, cloud)
    endpoint = record["endpoint"]
    models = record.get("model") or []
    models = [models] if isinstance(models, str) else models
    delete(cloud, "delete_endpoint", {"EndpointName": endpoint})
    if record.get("endpoint_config"):
        delete(cloud, "delete_endpoint_config", {"EndpointConfigName": record["endpoint_config"]})
    for model in models:
        delete(cloud, "delete_model", {"ModelName": model})
    if not cloud.dry_run:
        path = deploy.record_path(args.record_dir, endpoint)
        if os.path.exists(path):
            os.remove(path)
        note("deleted endpoint {}, its config and model".format(endpoint))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return aws.run(_main, sys.argv[1:] if argv is None else argv)
