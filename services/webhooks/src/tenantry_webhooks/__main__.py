from tenantry_service.cli import service_main
from tenantry_webhooks.app import SPEC


def main() -> None:
    service_main(SPEC)


if __name__ == "__main__":
    main()
