# Board entry point: run the relay firmware (compiled modules live in /lib/brelay).
import brelay.app

brelay.app.main()
