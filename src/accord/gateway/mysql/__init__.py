"""The MySQL protocol (MySQL, MariaDB and their kin) on the gateway's core: the wire protocol
(`protocol`), authentication both ways (`auth`), the data path of one session
(`conversation`), statement classes (`scope`), the login upstream (`upstream`) and the front
that ties them to the core (`proxy`)."""
