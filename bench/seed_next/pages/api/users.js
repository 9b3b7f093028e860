import { Pool } from "pg";

const pool = new Pool({ max: 5, connectionString: process.env.DATABASE_URL });

export default async function handler(req, res) {
  const { rows } = await pool.query("SELECT * FROM users");
  res.status(200).json({ users: rows });
}
