"""``make undeploy``: delete the endpoint, endpoint config and model that ``make deploy`` created.

Its scaling goes first (alarm, scaling policies, scalable target): a scalable target left behind
would outlive the endpoint, and a new endpoint of the same name would inherit it.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Dict, Optional

from shelfdet.launch import aws, deploy
from shelfdet.launch.aws import LaunchError, note

# How SageMaker and Application Auto Scaling say that something is not there.
GONE = ("could not find", "does not exist", "no scaling policy found", "no scalable target found")


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
    return dict(scaling_from_aws(cloud, endpoint), endpoint=endpoint, endpoint_config=desc["EndpointConfigName"],
                model=models)


def scaling_from_aws(cloud: aws.Aws, endpoint: str) -> Dict[str, Any]:
    """The scalable target, its policies and deploy's alarm of ``endpoint``, as a deploy record has them."""
    target = deploy.resource_id(endpoint)
    aas = cloud.client("application-autoscaling")
    found = {}  # type: Dict[str, Any]
    if aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[target]).get("ScalableTargets"):
        found["scalable_target"] = target
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=target).get("ScalingPolicies", [])
    if policies:
        found["scaling_policies"] = [p["PolicyName"] for p in policies if p.get("ResourceId") == target]
    alarms = cloud.client("cloudwatch").describe_alarms(AlarmNames=[deploy.alarm_name(endpoint)]).get("MetricAlarms", [])
    if alarms:
        found["alarms"] = [a["AlarmName"] for a in alarms]
    return found


@dataclasses.dataclass
class UndeployOptions(aws.Options):
    endpoint: Optional[str] = None  # default: the newest one deploy recorded for the region
    record_dir: str = deploy.RECORD_DIR
    force: bool = False  # also an endpoint deploy did not create


def plan(args: UndeployOptions, cloud: aws.Aws) -> Dict[str, Any]:
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
        note("# dry run: no record of {}, so its scaling (if any) was not looked up".format(args.endpoint))
        return {"endpoint": args.endpoint, "endpoint_config": "<config of endpoint {}>".format(args.endpoint),
                "model": ["<model of endpoint {}>".format(args.endpoint)]}
    return from_aws(cloud, args.endpoint, args.force)


def delete(cloud: aws.Aws, operation: str, request: Dict[str, Any], service: str = "sagemaker", name: str = "") -> None:
    try:
        cloud.send(service, operation, request)
    except cloud.client(service).exceptions.ClientError as err:
        # Gone already (an earlier undeploy, the console): the goal is reached.
        text = str(err).lower()
        if not any(gone in text for gone in GONE):
            raise
        note("{} already gone".format(name or list(request.values())[0]))


def delete_scaling(cloud: aws.Aws, record: Dict[str, Any]) -> bool:
    """Deletes what scaled the endpoint, if anything did; whether something did."""
    target = record.get("scalable_target")
    policies, alarms = record.get("scaling_policies") or [], record.get("alarms") or []
    if alarms:
        delete(cloud, "delete_alarms", {"AlarmNames": alarms}, "cloudwatch", ", ".join(alarms))
    where = {"ServiceNamespace": "sagemaker", "ResourceId": target or deploy.resource_id(record["endpoint"]),
             "ScalableDimension": deploy.SCALABLE_DIMENSION}
    for policy in policies:
        delete(cloud, "delete_scaling_policy", dict(where, PolicyName=policy), "application-autoscaling", policy)
    if target:
        delete(cloud, "deregister_scalable_target", where, "application-autoscaling", "scalable target " + target)
    return bool(target or policies or alarms)


def remove(cloud: aws.Aws, record: Dict[str, Any], record_dir: str) -> None:
    """Deletes what the deploy record names (scaling first), then the record."""
    endpoint = record["endpoint"]
    models = record.get("model") or []
    models = [models] if isinstance(models, str) else models
    scaled = delete_scaling(cloud, record)
    delete(cloud, "delete_endpoint", {"EndpointName": endpoint})
    if record.get("endpoint_config"):
        delete(cloud, "delete_endpoint_config", {"EndpointConfigName": record["endpoint_config"]})
    for model in models:
        delete(cloud, "delete_model", {"ModelName": model})
    if not cloud.dry_run:
        path = deploy.record_path(record_dir, endpoint)
        if os.path.exists(path):
            os.remove(path)
        note("deleted endpoint {}, its config and model{}".format(endpoint, " and its scaling" if scaled else ""))
