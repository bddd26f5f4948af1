from tessera.jobs.elastic.node import main

raise SystemExit(main())
