// The entry point Supabase deploys: serves handler.ts (`Deno.serve`; locally PORT picks the port).

import { serve } from "../_shared/http.ts";
import { handler } from "./handler.ts";

serve(handler);
