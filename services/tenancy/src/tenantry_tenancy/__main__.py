from tenantry_service.cli import service_main
from tenantry_tenancy.app import SPEC


def main() -> None:
    service_main(SPEC)


if __name__ == "__main__":
    main()
