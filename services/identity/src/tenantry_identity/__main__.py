from tenantry_identity.app import SPEC
from tenantry_servicekit.cli import service_main


def main() -> None:
    service_main(SPEC)


if __name__ == "__main__":
    main()
