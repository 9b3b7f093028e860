// The seed's route: every row of `users` through a node-postgres pool, as JSON.
import { Pool } from "pg";

const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 5 });

export const dynamic = "force-dynamic";

export async function GET() {
  const { rows } = await pool.query("SELECT * FROM users");
  return Response.json({ users: rows });
}
