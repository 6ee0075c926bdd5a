"""The e-mail command interface: mail from local users to <command>@<report domain> on
the relay listener is consumed by the appliance, acted on and answered by mail."""
