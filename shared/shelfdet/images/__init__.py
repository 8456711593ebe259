"""Building and pushing the Docker images: preflight, local docker or AWS CodeBuild, ECR push, doctor."""
