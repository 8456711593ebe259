"""Launchers for Amazon SageMaker and ECR, run on the user's machine.

Plain boto3: every request is a dict built once, then either printed
(``--dry-run``) or sent, so what ``DRY_RUN=1`` shows is what AWS receives.
Modules: aws (session, lookups, errors), images (names from versions.env),
push, training, tuning, deploy, undeploy, transform. Calling an endpoint
(``make predict ENDPOINT=``) is shelfdet.serving.predict's.
"""
