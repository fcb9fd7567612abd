// Loaded with `node --import ./test/stubs/register.js` (see ../../test.sh):
// lets Node load src/policy.js, whose `portcullis:policy/...` imports only
// exist inside the component, by resolving them to the stubs in this folder.
import { register } from "node:module";

register("./hooks.js", import.meta.url);
