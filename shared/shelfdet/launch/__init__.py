"""Launchers for Amazon SageMaker and ECR, run on the user's machine.

Plain boto3: every request is a dict built once, then either printed
(``--dry-run``) or sent, so what ``DRY_RUN=1`` shows is what AWS receives.
Modules: aws (session, lookups, errors), image_names (Docker image names from
versions.env, CodeBuild's names), training, tuning, weights, deploy, undeploy,
transform, endpoint (the client of a deployed endpoint: ``make predict
ENDPOINT=``), policy and bootstrap (IAM).
"""
