from tenantry_identity.app import SPEC
from tenantry_service.cli import service_main


def main() -> None:
    service_main(SPEC)


if __name__ == "__main__":
    main()
